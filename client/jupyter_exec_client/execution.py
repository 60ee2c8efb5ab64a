"""Background executions followed from the client: blocking and async handles on one core.

``executor.start(code)`` queues code on the server and returns an :class:`Execution` at once;
the run goes on whatever happens to this process. ``executor.execution(id)`` (from any
process, with the session's id) attaches to it again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from ._executor_core import EventFollower, ExecutorCore
from ._transport import SyncTransport, run_async, run_sync
from .blocks import IPythonCodeResult

__all__ = ["AsyncExecution", "Execution"]


class _ExecutionBase:
    """What both faces share: which execution, on which session, through which core."""

    def __init__(
        self, core: ExecutorCore, transport: SyncTransport, session_id: str, execution_id: str
    ) -> None:
        """A handle on ``execution_id`` of ``session_id``; nothing is sent yet."""
        self._core = core
        self._transport = transport
        self.session_id = session_id
        self.id = execution_id

    def __repr__(self) -> str:
        """Which execution of which session."""
        return f"<{type(self).__name__} {self.id} of session {self.session_id}>"

    def _follower(self, after: int) -> EventFollower:
        return EventFollower(self._core.api, self.session_id, self.id, after)


class Execution(_ExecutionBase):
    """A background execution (blocking calls).

    ``status()`` is ``queued``, ``running``, then that of its result (``ok``, ``error``,
    ``timeout``, ``dead``). ``wait()`` returns the result as ``execute_code_blocks`` does,
    its files saved in the executor's ``output_dir``. ``events()`` yields its output events
    as the server keeps them (replayed, then live), the ``done`` event (with the result)
    last, and opens the stream again by itself when the connection drops.
    """

    def model(self) -> dict[str, Any]:
        """The server's model of the execution (with ``result`` once it ended)."""
        return run_sync(self._core.api.get_execution(self.session_id, self.id), self._transport)

    def status(self) -> str:
        """``queued``, ``running``, or the status of its result."""
        return str(self.model()["status"])

    def wait(self, timeout: float | None = None) -> IPythonCodeResult:
        """The result once the execution ended; TimeoutError after ``timeout`` seconds."""
        return run_sync(
            self._core.wait_execution(self.session_id, self.id, timeout), self._transport
        )

    def events(self, after: int = 0) -> Iterator[dict[str, Any]]:
        """The events whose ``seq`` is greater than ``after``, then ``done``."""
        follower = self._follower(after)
        try:
            while True:
                event = run_sync(follower.next_event(), self._transport, keep_streams=True)
                if event is None:
                    return
                yield event
        finally:
            run_sync(follower.close(), self._transport)

    def interrupt(self) -> None:
        """Stop it: a queued execution never runs, a running one gets KeyboardInterrupt."""
        run_sync(self._core.api.interrupt_execution(self.session_id, self.id), self._transport)


class AsyncExecution(_ExecutionBase):
    """A background execution (async calls); the same as :class:`Execution`."""

    async def model(self) -> dict[str, Any]:
        """The server's model of the execution (with ``result`` once it ended)."""
        return await run_async(
            self._core.api.get_execution(self.session_id, self.id), self._transport
        )

    async def status(self) -> str:
        """``queued``, ``running``, or the status of its result."""
        return str((await self.model())["status"])

    async def wait(self, timeout: float | None = None) -> IPythonCodeResult:
        """The result once the execution ended; TimeoutError after ``timeout`` seconds."""
        return await run_async(
            self._core.wait_execution(self.session_id, self.id, timeout), self._transport
        )

    async def events(self, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The events whose ``seq`` is greater than ``after``, then ``done``."""
        follower = self._follower(after)
        try:
            while True:
                event = await run_async(follower.next_event(), self._transport, keep_streams=True)
                if event is None:
                    return
                yield event
        finally:
            await run_async(follower.close(), self._transport)

    async def interrupt(self) -> None:
        """Stop it: a queued execution never runs, a running one gets KeyboardInterrupt."""
        await run_async(
            self._core.api.interrupt_execution(self.session_id, self.id), self._transport
        )
