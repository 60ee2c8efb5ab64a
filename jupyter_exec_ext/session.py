"""One agent session: a kernel of its own, a working folder, captured files, calls in order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .capture import OutputCapture
from .changes import WorkspaceChanges
from .kernel import KernelConnection, KernelDied, Outcome
from .store import OutputStore
from .transcript import Transcript

if TYPE_CHECKING:
    from .events import AgentSessionEvents


def _both(
    first: Callable[[dict[str, Any]], None] | None, second: Callable[[dict[str, Any]], None]
) -> Callable[[dict[str, Any]], None]:
    """A listener that tells ``first`` (if any), then ``second``."""
    if first is None:
        return second

    def listener(event: dict[str, Any]) -> None:
        first(event)
        second(event)

    return listener


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


def isoformat(moment: datetime) -> str:
    """ISO 8601 with a ``Z``, as jupyter_server writes its timestamps."""
    return moment.isoformat().replace("+00:00", "Z")


class SessionClosedError(Exception):
    """The session was deleted while a call waited for its turn."""


class AgentSession:
    """A kernel, its working folder and its captured files, used by one agent.

    Calls run one at a time in arrival order (``asyncio.Lock`` wakes waiters first come,
    first served); different sessions never wait for each other. When the kernel dies the
    session starts a new one by itself, so the next call works.
    """

    def __init__(
        self,
        *,
        session_id: str,
        name: str,
        kernel_name: str,
        connection: KernelConnection,
        store: OutputStore,
        working_dir: Path,
        interrupt_grace: float,
        log: logging.Logger,
        transcript: Transcript | None = None,
        memory_limit: int = 0,
        env: dict[str, str] | None = None,
        changes: WorkspaceChanges | None = None,
    ) -> None:
        """Wrap a started kernel ``connection`` that has the kernel helper loaded.

        ``env`` is what the session's kernel was given (only its names are ever shown);
        ``changes`` tracks what calls write in ``working_dir`` (None: not tracked).
        """
        self.id = session_id
        self.name = name
        self.kernel_name = kernel_name
        self.connection = connection
        self.store = store
        self.working_dir = working_dir
        self.interrupt_grace = interrupt_grace
        self.log = log
        self.transcript = transcript
        self.memory_limit = memory_limit
        self.env = dict(env or {})
        self.changes = changes
        #: Where the session's calls are reported as server events (None: nowhere).
        self.events: AgentSessionEvents | None = None
        self.created = self.last_activity = utcnow()
        self.execution_count = 0
        self.status = "idle"
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def kernel_id(self) -> str:
        """The id of the session's kernel in the server's kernel manager."""
        return self.connection.kernel_id

    def model(self) -> dict[str, Any]:
        """The JSON model of the session, as the API returns it."""
        return {
            "id": self.id,
            "name": self.name,
            "kernel_id": self.kernel_id,
            "kernel_name": self.kernel_name,
            "status": self.status,
            "created": isoformat(self.created),
            "last_activity": isoformat(self.last_activity),
            "execution_count": self.execution_count,
            "transcript_path": self.transcript.path if self.transcript else None,
            # Names only: values are secrets (API keys) as often as not.
            "env_keys": sorted(self.env),
        }

    async def execute(
        self,
        code: str,
        timeout: float,
        max_chars: int,
        *,
        on_start: Callable[[], None] | None = None,
        on_output: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run ``code`` after the calls before it; return the execution result model.

        ``on_start`` is called when the call's turn comes, ``on_output`` with each output
        item (numbered by ``seq``) as the kernel emits it.
        """
        async with self._lock:
            if self._closed:
                raise SessionClosedError(self.id)
            if on_start is not None:
                on_start()
            started = time.monotonic()
            if self.events is not None:
                self.events.execution_started(self.id)
            self.status = "busy"
            self.last_activity = utcnow()
            # The transcript follows the call live where its notebook is open in JupyterLab.
            transcript = self.transcript
            live = transcript.begin(code) if transcript is not None else None
            listener = on_output
            if transcript is not None and live is not None:
                listener = _both(on_output, partial(transcript.output, live))
            capture = OutputCapture(self.store, max_chars, listener=listener)
            if self.changes is not None:
                self.changes.begin_call()
            try:
                outcome = await self._execute(code, timeout, capture)
            except asyncio.CancelledError:
                capture.add_note("The client went away, so the call was interrupted.")
                failed = capture.result("error", None)
                if self.transcript is not None:
                    self.transcript.append(code, failed, live)
                self._report_finished(failed, started)
                raise
            except BaseException:
                failed = capture.result("error", None)
                if transcript is not None and live is not None:  # its running cell must end
                    transcript.append(code, failed, live)
                self._report_finished(failed, started)
                raise
            finally:
                self.last_activity = utcnow()
                if self.status == "busy":
                    self.status = "idle"
            if outcome.execution_count is not None:
                self.execution_count = outcome.execution_count
            workspace_changes = self._workspace_changes(capture)
            result = capture.result(outcome.status, outcome.execution_count)
            result["workspace_changes"] = workspace_changes
            if self.transcript is not None:
                self.transcript.append(code, result, live)
            self._report_finished(result, started)
            return result

    def _report_finished(self, result: dict[str, Any], started: float) -> None:
        """Send the event of a call that started at ``started`` (monotonic) and ended so."""
        if self.events is not None:
            self.events.execution_finished(self.id, result, time.monotonic() - started)

    def _workspace_changes(self, capture: OutputCapture) -> list[dict[str, Any]]:
        """The files the call created, modified or deleted; a note when the list is cut."""
        if self.changes is None:
            return []
        changes = self.changes.end_call()
        if self.changes.truncated:
            capture.add_note(
                f"The working folder has more than {self.changes.max_entries} entries to look "
                "at: workspace_changes lists only some of what this call changed."
            )
        return changes

    async def _execute(self, code: str, timeout: float, capture: OutputCapture) -> Outcome:
        if self.connection.unresponsive:
            await self._recover()
            capture.add_note(
                "An earlier call whose client went away could not be interrupted, so the kernel "
                "was restarted: the session's earlier state (variables, imports) is lost."
            )
        elif not await self.connection.is_alive():
            await self._recover()
            capture.add_note(
                "The kernel had died since the last call: a new kernel was started and the "
                "session's earlier state (variables, imports) is lost."
            )
        outcome = await self.connection.execute(
            code, capture, timeout, interrupt_grace=self.interrupt_grace
        )
        if outcome.status == "timeout":
            # "Timeout" first: AutoGen's executor says it, and agents written for it look for it.
            message = (
                f"Timeout: execution exceeded the timeout of {timeout:g} s and the kernel was "
                "interrupted."
            )
            if outcome.unresponsive:
                message += (
                    f" It did not stop within {self.interrupt_grace:g} s, so it was restarted:"
                    " the session's earlier state is lost."
                )
                await self._recover()
            else:
                message += " Variables set before the interrupt are kept."
            capture.add_note(message)
            capture.error = {
                "ename": "TimeoutError",
                "evalue": message,
                "traceback": capture.error["traceback"] if capture.error else [],
            }
        elif outcome.status == "dead" and not self._closed and self.connection.memory_limit_hit():
            # The sandbox's cgroup killed the kernel: the same answer as a MemoryError.
            await self._memory_limit_reached(capture)
            return Outcome("error", outcome.execution_count)
        elif outcome.status == "dead":
            if self._closed:
                message = "The session was deleted while this call ran."
            else:
                message = (
                    "The kernel died while running this code (it crashed, exited or was "
                    "killed): the session's state (variables, imports) was lost. A new kernel "
                    "has been started for the next call."
                )
                if self.memory_limit:
                    message += f" The session's memory limit is {self.memory_limit} bytes."
            capture.add_note(message)
            capture.error = {"ename": "KernelDied", "evalue": message, "traceback": []}
            if not self._closed:
                await self._recover()
        elif outcome.exited:
            capture.add_note(
                "The code asked the kernel to exit, so it stopped: the session's state "
                "(variables, imports) is lost. A new kernel has been started for the next call."
            )
            await self._recover()
        elif self.memory_limit and capture.error and capture.error["ename"] == "MemoryError":
            # Past the limit the kernel may be left in a half-allocated state: start afresh.
            await self._memory_limit_reached(capture)
        return outcome

    async def _memory_limit_reached(self, capture: OutputCapture) -> None:
        """Start a fresh kernel and say why: the code went past the memory limit."""
        await self._recover()
        capture.add_note(
            f"Memory limit reached: the code needed more than the session's limit of "
            f"{self.memory_limit} bytes. A new kernel was started and the session's earlier "
            "state (variables, imports) is lost."
        )
        if capture.error is None:
            capture.error = {
                "ename": "MemoryError",
                "evalue": f"memory limit of {self.memory_limit} bytes reached",
                "traceback": [],
            }

    async def _recover(self) -> None:
        """Start a fresh kernel in place of a dead or stuck one."""
        self.status = "starting"
        self.connection.unresponsive = False
        try:
            await self.connection.restart()
            self.execution_count = 0
            self.status = "idle"
        except (KernelDied, TimeoutError, RuntimeError):
            self.log.exception("Agent session %s: the kernel could not be restarted", self.id)
            self.status = "dead"

    async def interrupt(self) -> None:
        """Interrupt the running call, if any; it returns with a KeyboardInterrupt error."""
        await self.connection.interrupt()

    async def restart(self) -> None:
        """Replace the kernel with a fresh one: every variable is gone.

        A running call is interrupted first so that the restart does not wait for it.
        """
        if self._lock.locked():
            await self.connection.interrupt()
        async with self._lock:
            if self._closed:
                raise SessionClosedError(self.id)
            await self._recover()
            self.last_activity = utcnow()

    async def close(self) -> None:
        """Shut the kernel down and delete the captured files."""
        self._closed = True
        # Shut the kernel down before taking the lock: a running call then ends at once
        # (it sees the kernel gone) instead of running until its timeout.
        await self.connection.shutdown_kernel()
        async with self._lock:
            self.connection.close()
            if self.transcript is not None:
                # The transcript reads images from the store: finish it first.
                await self.transcript.flush()
            self.store.remove_all()
            if self.changes is not None:
                self.changes.close()
            self.status = "dead"
