"""Executions as objects of their own: streamed calls and background runs, with their events.

An :class:`Execution` is one call of a session seen from outside while it runs: its status,
its output events as the kernel emits them (numbered by ``seq``, kept in an
:class:`EventLog` that is bounded like an execution result), and its result once it ended.
The :class:`ExecutionRegistry` starts them on their session, keeps background runs findable
by id for a while after they ended, and lets streams and long polls wait for news.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict, deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tornado import web
from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from .capture import OutputCapture
from .session import SessionClosedError, isoformat, utcnow

if TYPE_CHECKING:
    from .session import AgentSession

#: How far, in multiples of the text budget (at least _MIN_READER_LAG characters), a
#: reader that follows live may fall behind before the events it has not sent are dropped
#: anyway: a reader that keeps up sees every event, a stalled one cannot hold memory.
_READER_LAG_FACTOR = 10
_MIN_READER_LAG = 1_000_000
#: What an event costs beside its text, in characters of the budget: many tiny events (a
#: progress bar printing one character at a time) must not keep memory growing either.
_EVENT_OVERHEAD = 100


def _event_chars(event: dict[str, Any]) -> int:
    """The size of an event against the text budget."""
    text = event.get("text") or ""
    if event["type"] == "error":
        text = "".join(event.get("traceback") or []) or str(event.get("evalue", ""))
    return len(text) + _EVENT_OVERHEAD


class EventReader:
    """Where one live reader of an :class:`EventLog` is: the ``seq`` it has sent."""

    def __init__(self, seq: int) -> None:
        """A reader that has seen the events up to ``seq``."""
        self.seq = seq


class EventLog:
    """The output events of one execution, in ``seq`` order, in bounded memory.

    As in an execution result, past ``max_chars`` (0: no limit) the first half of the budget
    is kept as the head and the newest events fill the other half, the tail; the events in
    between are dropped. A replay shows them as one ``truncated`` event that carries the
    ``seq`` of the last event left out, so a reader resuming after it loses nothing more;
    an event longer than the whole tail keeps the end of its text and is marked
    ``truncated``. Events a live reader has not sent yet are kept until it falls
    ``_READER_LAG_FACTOR`` budgets behind.
    """

    def __init__(self, max_chars: int) -> None:
        """Keep about ``max_chars`` characters of event text (0: every event)."""
        self.max_chars = max_chars
        self.last_seq = 0
        #: The result's file with the whole text, once the execution ended with its output cut.
        self.full_text_file: str | None = None
        self._head: list[dict[str, Any]] = []
        self._head_chars = 0
        self._head_open = True
        self._tail: deque[tuple[dict[str, Any], int]] = deque()
        self._tail_chars = 0
        self._omitted_chars = 0
        self._omitted_last_seq = 0
        self._readers: set[EventReader] = set()

    def open_reader(self, after: int) -> EventReader:
        """Follow the log from ``after`` on; the events not sent yet are held for the reader."""
        reader = EventReader(after)
        self._readers.add(reader)
        return reader

    def advance(self, reader: EventReader, seq: int) -> None:
        """The reader has sent the events up to ``seq``."""
        reader.seq = seq
        self._trim_tail()

    def close_reader(self, reader: EventReader) -> None:
        """The reader is gone: hold nothing more for it."""
        self._readers.discard(reader)
        self._trim_tail()

    def append(self, event: dict[str, Any]) -> None:
        """Add the next event (it carries its ``seq``)."""
        self.last_seq = event["seq"]
        size = _event_chars(event)
        if self._head_open:
            if not self.max_chars or self._head_chars + size <= self.max_chars // 2:
                self._head.append(event)
                self._head_chars += size
                return
            self._head_open = False
        self._tail.append((event, size))
        self._tail_chars += size
        self._trim_tail()

    def after(self, seq: int) -> list[dict[str, Any]]:
        """The events whose ``seq`` is greater than ``seq``, a gap marked where text was cut."""
        # The head holds the first events, so the event of seq n is at index n - 1.
        events = self._head[seq:]
        if self._omitted_last_seq > seq:
            events.append(
                {
                    "type": "truncated",
                    "omitted_chars": self._omitted_chars,
                    "file": self.full_text_file,
                    "seq": self._omitted_last_seq,
                }
            )
        # The tail is short and only its end is new to a reader that keeps up.
        new = []
        for event, _ in reversed(self._tail):
            if event["seq"] <= seq:
                break
            new.append(event)
        events.extend(reversed(new))
        return events

    def _trim_tail(self) -> None:
        if not self.max_chars:
            return
        budget = self.max_chars - self.max_chars // 2
        behind = min((reader.seq for reader in self._readers), default=None)
        lag_limit = max(_READER_LAG_FACTOR * self.max_chars, _MIN_READER_LAG)
        while self._tail_chars > budget and len(self._tail) > 1:
            if (
                behind is not None
                and self._tail[0][0]["seq"] > behind
                and self._tail_chars <= lag_limit
            ):
                return  # a live reader has yet to send it
            event, size = self._tail.popleft()
            self._tail_chars -= size
            self._omitted_chars += size - _EVENT_OVERHEAD
            self._omitted_last_seq = event["seq"]
        if self._tail_chars > budget and self._tail:
            # One event larger than the whole tail: keep the end of its text.
            event, size = self._tail[0]
            if behind is not None and event["seq"] > behind and size <= lag_limit:
                return
            text = event.get("text")
            if isinstance(text, str):
                keep = max(budget - _EVENT_OVERHEAD, 0)
                cut = {**event, "text": text[len(text) - keep :], "truncated": True}
                self._tail[0] = (cut, _event_chars(cut))
                self._omitted_chars += size - _event_chars(cut)
                self._tail_chars = _event_chars(cut)


class Execution:
    """One call of a session: its status, its events as they come, its result at the end."""

    def __init__(self, session_id: str, max_chars: int, *, background: bool) -> None:
        """A queued call of session ``session_id`` whose event text is bounded by ``max_chars``."""
        self.id = str(uuid.uuid4())
        self.session_id = session_id
        self.background = background
        self.status = "queued"
        self.created = utcnow()
        self.started: datetime | None = None
        self.finished: datetime | None = None
        self.result: dict[str, Any] | None = None
        self.log = EventLog(max_chars)
        self.task: asyncio.Future[None] | None = None
        self._news: asyncio.Future[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def done(self) -> bool:
        """Whether the call ended (its result is there)."""
        return self.result is not None

    def model(self, *, with_result: bool = True) -> dict[str, Any]:
        """The JSON model of the execution; ``result`` only once it ended."""
        model: dict[str, Any] = {
            "id": self.id,
            "session_id": self.session_id,
            "status": self.status,
            "created": isoformat(self.created),
            "started": isoformat(self.started) if self.started else None,
            "finished": isoformat(self.finished) if self.finished else None,
            "last_seq": self.log.last_seq,
        }
        if with_result and self.result is not None:
            model["result"] = self.result
        return model

    def events_after(self, seq: int) -> list[dict[str, Any]]:
        """The kept events after ``seq``."""
        return self.log.after(seq)

    # -- what the running call reports -------------------------------------------------------

    def mark_started(self) -> None:
        """The call's turn came: it runs now."""
        self.status = "running"
        self.started = utcnow()
        self._notify()

    def add_event(self, event: dict[str, Any]) -> None:
        """Record an output event of the call."""
        self.log.append(event)
        self._notify()

    def finish(self, result: dict[str, Any]) -> None:
        """The call ended with ``result``."""
        for item in result.get("outputs", []):
            if item.get("type") == "truncated":
                self.log.full_text_file = item.get("file")
        self.result = result
        self.status = result["status"]
        self.finished = utcnow()
        self._notify()

    # -- waiting for news --------------------------------------------------------------------

    async def changed(self, timeout: float) -> bool:
        """Wait until something happens (an event, the start, the end); False after ``timeout``."""
        if self._news is None:
            self._news = asyncio.get_running_loop().create_future()
        # asyncio.wait, not wait_for: the future is shared by every waiter, and one's timeout
        # must not cancel it for all (and it costs no extra task per wait).
        done, _ = await asyncio.wait({self._news}, timeout=timeout)
        return bool(done)

    async def wait(self, timeout: float) -> None:
        """Wait until the call ended, at most ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.done and (remaining := deadline - loop.time()) > 0:
            await self.changed(remaining)

    def _notify(self) -> None:
        if self._news is not None:
            if not self._news.done():
                self._news.set_result(None)
            self._news = None


def _note_result(status: str, message: str) -> dict[str, Any]:
    """The result of a call that ended before its code could run."""
    capture = OutputCapture(None)
    capture.add_note(message)
    capture.error = {"ename": "ExecutionNotRun", "evalue": message, "traceback": []}
    return capture.result(status, None)


class ExecutionRegistry(LoggingConfigurable):
    """Starts executions and keeps the background ones of every session for a while."""

    heartbeat_interval = Float(
        15.0,
        config=True,
        help="Seconds without output after which a streamed execution (or an events stream) "
        'sends a {"type": "heartbeat"} line, so that proxies and clients keep the connection.',
    )

    finished_execution_ttl = Float(
        3600.0,
        config=True,
        help="Seconds a finished background execution stays readable (its model, result and "
        "events) before it is forgotten. 0 means no time limit (max_finished_executions "
        "still applies).",
    )

    max_finished_executions = Integer(
        20,
        config=True,
        help="Finished background executions kept per session; past it the oldest are "
        "forgotten. Each keeps at most about twice max_output_chars of text. 0 means no limit.",
    )

    max_wait = Float(
        300.0,
        config=True,
        help="The longest, in seconds, that GET .../executions/{id}?wait=S holds a request "
        "open waiting for the execution to end; a larger S is cut to this.",
    )

    def __init__(self, **kwargs: Any) -> None:
        """No executions yet."""
        super().__init__(**kwargs)
        # Session id -> its background executions by id, oldest first.
        self._executions: dict[str, OrderedDict[str, Execution]] = {}
        self._tasks: set[asyncio.Future[None]] = set()

    def start(
        self, session: AgentSession, code: str, timeout: float, max_chars: int, *, background: bool
    ) -> Execution:
        """Queue ``code`` on ``session`` behind the calls before it; return its execution.

        A background execution is kept under its id; a streamed one belongs to its request.
        """
        execution = Execution(session.id, max_chars, background=background)
        if background:
            self._executions.setdefault(session.id, OrderedDict())[execution.id] = execution
        task = asyncio.ensure_future(self._run(execution, session, code, timeout, max_chars))
        execution.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return execution

    def get(self, session_id: str, execution_id: str) -> Execution:
        """A background execution of the session, or a 404."""
        kept = self._executions.get(session_id)
        execution = kept.get(execution_id) if kept is not None else None
        if execution is None:
            raise web.HTTPError(
                404, f"Execution not found in agent session {session_id}: {execution_id}"
            )
        return execution

    def list(self, session_id: str) -> list[Execution]:
        """The session's kept background executions, oldest first."""
        kept = self._executions.get(session_id)
        return list(kept.values()) if kept is not None else []

    def cancel_queued(self, execution: Execution) -> bool:
        """Cancel an execution still waiting for its turn (it never runs); False if it runs."""
        if execution.status != "queued" or execution.task is None:
            return False
        execution.task.cancel()
        return True

    def forget_session(self, session_id: str) -> None:
        """Forget a deleted session's executions (their calls end with the session)."""
        for execution in self._executions.pop(session_id, {}).values():
            if execution._expiry is not None:
                execution._expiry.cancel()

    async def shutdown(self) -> None:
        """Wait for the calls still winding down (their sessions are closed)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for session_id in list(self._executions):
            self.forget_session(session_id)

    # -- helpers -----------------------------------------------------------------------------

    async def _run(
        self, execution: Execution, session: AgentSession, code: str, timeout: float, max_chars: int
    ) -> None:
        try:
            result = await session.execute(
                code,
                timeout,
                max_chars,
                on_start=execution.mark_started,
                on_output=execution.add_event,
            )
        except SessionClosedError:
            result = _note_result("dead", "The session was deleted before this call ran.")
        except asyncio.CancelledError:
            message = (
                "The call was cancelled before it started."
                if execution.started is None
                else "The client went away, so the call was interrupted."
            )
            execution.finish(_note_result("error", message))
            self._finished(execution)
            # A streamed call's request cancelled it; a queued background call was cancelled
            # on purpose: either way the task's end is the cancellation, not an error.
            return
        except Exception:
            self.log.exception("Agent session %s: execution %s failed", session.id, execution.id)
            result = _note_result("error", "The server failed to run this call; see its log.")
        execution.finish(result)
        self._finished(execution)

    def _finished(self, execution: Execution) -> None:
        """Keep a finished background execution within the time and count limits."""
        kept = self._executions.get(execution.session_id)
        if not execution.background or kept is None:
            return
        if self.finished_execution_ttl > 0:
            execution._expiry = asyncio.get_running_loop().call_later(
                self.finished_execution_ttl, self._forget, execution
            )
        if self.max_finished_executions:
            finished = [e for e in kept.values() if e.done]
            for old in finished[: max(len(finished) - self.max_finished_executions, 0)]:
                self._forget(old)

    def _forget(self, execution: Execution) -> None:
        kept = self._executions.get(execution.session_id)
        if kept is not None and kept.pop(execution.id, None) is not None and execution._expiry:
            execution._expiry.cancel()
