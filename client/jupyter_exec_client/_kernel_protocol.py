"""Run code on servers without the agent-session API: the kernels API and a kernel websocket.

A :class:`KernelProtocolSession` is the second backend of the executor core. It starts a
kernel through ``api/kernels``, speaks the Jupyter messaging protocol over the kernel's
websocket (``api/kernels/<id>/channels``), and gives the same execution result as the
server's ``execute`` call: timeouts interrupt the kernel and keep the output so far, a
kernel death is reported and a working kernel is there for the next call.

Like :mod:`jupyter_exec_client._api` it does no I/O: its flows yield HTTP :class:`Request`\\ s
and channel commands (:class:`OpenChannel`, :class:`SendMessage`, :class:`ReceiveMessage`,
:class:`CloseChannel`) that a transport carries out.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from ._api import CloseStream, ReadLine, Request
from ._kernel_output import MAX_OUTPUT_CHARS, OutputCollector
from ._kernels_api import KernelNotFoundError, KernelsAPI
from .connection import JupyterConnectionInfo
from .errors import ExecutorClosedError, JupyterExecError, ServerConnectionError

T = TypeVar("T")

#: Seconds without a message after which the kernel's state is asked of the server.
LIVENESS_INTERVAL = 1.0
#: Seconds an interrupted kernel gets to become idle before it is restarted.
INTERRUPT_GRACE = 3.0
#: Seconds a newly opened websocket waits for its kernel to answer, and between questions.
READY_TIMEOUT = 30.0
READY_ASK_INTERVAL = 0.5
#: The extra to install for this backend, named in the ImportError when it is missing.
WEBSOCKET_EXTRA = 'pip install "jupyter-exec-client[websocket]"'
_PROTOCOL_VERSION = "5.3"


@dataclass(frozen=True)
class OpenChannel:
    """Open the kernel websocket at ``path`` (relative to the base URL), closing any other."""

    path: str


@dataclass(frozen=True)
class SendMessage:
    """Send a Jupyter message (with its ``channel``) on the open websocket."""

    message: dict[str, Any]


@dataclass(frozen=True)
class ReceiveMessage:
    """Wait at most ``timeout`` seconds for the next message; the answer is None on timeout."""

    timeout: float


@dataclass(frozen=True)
class CloseChannel:
    """Close the websocket, if one is open."""


ChannelCommand: TypeAlias = OpenChannel | SendMessage | ReceiveMessage | CloseChannel
#: Anything a flow may ask a transport to do.
Command: TypeAlias = Request | ReadLine | CloseStream | ChannelCommand
#: A call in progress that may use the kernel websocket as well as HTTP.
KernelFlow: TypeAlias = Generator[Command, Any, T]


class ChannelClosedError(ServerConnectionError):
    """The kernel's websocket closed (the kernel went away, or the connection dropped)."""


@dataclass(frozen=True)
class _Outcome:
    status: str  # "ok" | "error" | "timeout" | "dead"
    execution_count: int | None = None
    unresponsive: bool = False
    #: The code asked the kernel to exit (``exit()``, ``quit()``): it is shutting down.
    exited: bool = False


def require_websocket_client() -> None:
    """Raise ImportError, naming the extra to install, when websocket-client is missing."""
    if importlib.util.find_spec("websocket") is None:
        raise ImportError(
            "This Jupyter server has no agent-session API, and talking to its kernels "
            f"directly needs the websocket-client package: {WEBSOCKET_EXTRA} (or install "
            "jupyter-exec-ext into the server's environment)."
        )


def shell_request(msg_type: str, content: dict[str, Any], client_session: str) -> dict[str, Any]:
    """A request of type ``msg_type`` for the shell channel."""
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "jupyter-exec-client",
            "session": client_session,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": _PROTOCOL_VERSION,
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": "shell",
        "buffers": [],
    }


def execute_request(code: str, client_session: str) -> dict[str, Any]:
    """An ``execute_request`` for the shell channel; ``input()`` in the code fails at once."""
    content = {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    return shell_request("execute_request", content, client_session)


class KernelProtocolSession:
    """One kernel of a plain Jupyter server, driven over its websocket (flows, no I/O)."""

    def __init__(
        self,
        connection_info: JupyterConnectionInfo,
        output_dir: Path,
        *,
        max_output_chars: int = MAX_OUTPUT_CHARS,
        interrupt_grace: float = INTERRUPT_GRACE,
        clock: Callable[[], float] = time.monotonic,
        env: dict[str, str] | None = None,
    ) -> None:
        """Prepare to start a kernel; raise ImportError when websocket-client is missing.

        ``env`` goes to the server with the kernel's start (Kernel Gateway passes ``KERNEL_*``
        variables to the kernel; jupyter_server 2 ignores them) and, for a Python kernel, into
        its ``os.environ`` after every start and restart.
        """
        require_websocket_client()
        self.api = KernelsAPI(connection_info)
        self.env = dict(env or {})
        # Set when the kernel is new (started, restarted, replaced): the env goes in first.
        self._needs_env = False
        self.output_dir = output_dir
        self.max_output_chars = max_output_chars
        self.interrupt_grace = interrupt_grace
        self.kernel_name: str | None = None
        self.kernel_id: str | None = None
        self._clock = clock
        # The messaging protocol's session: one per client, in every message header.
        self._client_session = uuid.uuid4().hex
        self._channel_open = False
        # The request of a call abandoned before the kernel was idle (a cancelled async call,
        # a KeyboardInterrupt): the next call first waits for it to end.
        self._unfinished_msg_id: str | None = None

    def start(self, kernel_name: str) -> KernelFlow[str]:
        """Start a kernel and open its websocket; return the kernel's id."""
        self.kernel_name = kernel_name
        model = yield from self.api.start_kernel(kernel_name, env=self.env)
        self.kernel_id = str(model["id"])
        self._needs_env = True
        try:
            yield from self._open_channel()
        except BaseException:
            # A kernel nobody can talk to would only be left running.
            with contextlib.suppress(JupyterExecError):
                yield from self.api.delete_kernel(self.kernel_id)
            self.kernel_id = None
            raise
        return self.kernel_id

    def stop(self) -> KernelFlow[None]:
        """Close the websocket and shut the kernel down; a kernel already gone is fine."""
        kernel_id, self.kernel_id = self.kernel_id, None
        self._unfinished_msg_id = None
        yield from self._close_channel()
        if kernel_id is not None:
            with contextlib.suppress(KernelNotFoundError):
                yield from self.api.delete_kernel(kernel_id)

    def interrupt(self) -> KernelFlow[None]:
        """Interrupt the code the kernel is running."""
        yield from self.api.interrupt_kernel(self._kernel_id())

    def restart(self) -> KernelFlow[None]:
        """Give the session a fresh kernel; one the server lost is started anew."""
        kernel_id = self._kernel_id()
        self._unfinished_msg_id = None
        yield from self._close_channel()
        try:
            yield from self.api.restart_kernel(kernel_id)
        except KernelNotFoundError:
            yield from self._start_replacement()
        self._needs_env = True
        yield from self._open_channel()

    def execute(
        self,
        code: str,
        timeout: float,
        *,
        on_event: Callable[[dict[str, Any], dict[str, Path]], None] | None = None,
    ) -> KernelFlow[dict[str, Any]]:
        """Run ``code``; past ``timeout`` seconds the kernel is interrupted. The result has
        the shape of the server's execution result, its files listed with their ``path``.

        ``on_event`` is called with each output as it arrives, as the server streams them,
        and the paths its files were written to.
        """
        self._kernel_id()
        collector = OutputCollector(self.output_dir, self.max_output_chars, listener=on_event)
        try:
            outcome = yield from self._execute(code, timeout, collector)
            return collector.result(outcome.status, outcome.execution_count)
        finally:
            collector.close()

    # -- execution -----------------------------------------------------------------------

    def _execute(
        self, code: str, timeout: float, collector: OutputCollector
    ) -> KernelFlow[_Outcome]:
        if not self._channel_open:
            yield from self._open_channel()
        if self._unfinished_msg_id is not None:
            yield from self._finish_abandoned_call(self._unfinished_msg_id, collector)
        outcome = yield from self._run(code, timeout, collector)
        if outcome.status == "timeout":
            # "Timeout" first: AutoGen's executor says it, and agents written for it look for it.
            message = (
                f"Timeout: execution exceeded the timeout of {timeout:g} s and the kernel was "
                "interrupted."
            )
            if outcome.unresponsive:
                problem = yield from self._recover(restart=True)
                message += (
                    f" It did not stop within {self.interrupt_grace:g} s, so it was restarted:"
                    " the session's earlier state is lost."
                    if problem is None
                    else f" It did not stop within {self.interrupt_grace:g} s and could not be "
                    f"restarted: {problem}"
                )
            else:
                message += " Variables set before the interrupt are kept."
            collector.add_note(message)
            collector.error = {
                "ename": "TimeoutError",
                "evalue": message,
                "traceback": collector.error["traceback"] if collector.error else [],
            }
        elif outcome.status == "dead":
            problem = yield from self._recover(restart=False)
            message = (
                "The kernel died while running this code (it crashed, exited or was killed): "
                "the session's state (variables, imports) was lost. "
            )
            message += (
                "A new kernel has been started for the next call."
                if problem is None
                else f"No new kernel could be started: {problem}"
            )
            collector.add_note(message)
            collector.error = {"ename": "KernelDied", "evalue": message, "traceback": []}
        elif outcome.exited:
            problem = yield from self._recover(restart=True)
            collector.add_note(
                "The code asked the kernel to exit, so it stopped: the session's state "
                "(variables, imports) is lost. "
                + (
                    "A new kernel has been started for the next call."
                    if problem is None
                    else f"No new kernel could be started: {problem}"
                )
            )
        return outcome

    def _run(self, code: str, timeout: float, collector: OutputCollector) -> KernelFlow[_Outcome]:
        """Send the code and feed its IOPub messages to ``collector`` until the kernel is idle."""
        request = execute_request(code, self._client_session)
        msg_id = request["header"]["msg_id"]
        yield SendMessage(request)
        self._unfinished_msg_id = msg_id
        outcome = yield from self._collect(msg_id, timeout, collector)
        self._unfinished_msg_id = None
        return outcome

    def _collect(
        self, msg_id: str, timeout: float, collector: OutputCollector
    ) -> KernelFlow[_Outcome]:
        """Feed the request's messages to ``collector`` until the kernel is idle again."""
        deadline = self._clock() + timeout
        timed_out = idle = False
        reply: dict[str, Any] | None = None
        execution_count: int | None = None
        while not (idle and reply is not None):
            remaining = deadline - self._clock()
            if remaining <= 0 and not idle:
                if timed_out:
                    return _Outcome("timeout", execution_count, unresponsive=True)
                timed_out = True
                yield from self.api.interrupt_kernel(self._kernel_id())
                deadline = self._clock() + self.interrupt_grace
                continue
            try:
                message = yield ReceiveMessage(max(0.0, min(remaining, LIVENESS_INTERVAL)))
            except ChannelClosedError:
                self._channel_open = False
                if not (yield from self._kernel_alive()):
                    return _Outcome("dead", execution_count)
                # A new websocket will not see this request's end: nothing to wait for.
                self._unfinished_msg_id = None
                raise
            if message is None:
                if idle:
                    break  # the reply is late or lost; the output is complete
                if not (yield from self._kernel_alive()):
                    return _Outcome("dead", execution_count)
                continue
            channel = message.get("channel")
            msg_type = (message.get("header") or {}).get("msg_type")
            content = message.get("content") or {}
            # The server announces a kernel death itself, outside any request.
            if msg_type == "status" and content.get("execution_state") in ("restarting", "dead"):
                return _Outcome("dead", execution_count)
            if (message.get("parent_header") or {}).get("msg_id") != msg_id:
                continue
            if channel == "shell" and msg_type == "execute_reply":
                reply = content
                execution_count = content.get("execution_count", execution_count)
            elif channel == "iopub":
                if msg_type == "status" and content.get("execution_state") == "idle":
                    idle = True
                elif msg_type == "execute_input":
                    execution_count = content.get("execution_count", execution_count)
                else:
                    collector.handle(str(msg_type), content)
        exited = False
        for payload in (reply or {}).get("payload", []):
            # The pager (``obj?``) answers in the reply, not on IOPub.
            if payload.get("source") == "page":
                collector.add_data("display", payload.get("data") or {})
            # ``exit()`` asks the frontend to shut the kernel down, and the kernel stops.
            elif payload.get("source") == "ask_exit" and not payload.get("keepkernel"):
                exited = True
        if timed_out:
            return _Outcome("timeout", execution_count)
        if (reply or {}).get("status") == "aborted":
            collector.add_note(
                "The kernel did not run this code: it aborted it after an error in code "
                "queued before it."
            )
        failed = collector.error is not None or (reply or {}).get("status", "ok") != "ok"
        return _Outcome("error" if failed else "ok", execution_count, exited=exited)

    def _finish_abandoned_call(self, msg_id: str, collector: OutputCollector) -> KernelFlow[None]:
        """Let the request of an abandoned call end before sending another.

        A request queued behind an interrupted one would be aborted by the kernel: so the
        abandoned one is interrupted (again) and waited for; a kernel that does not stop
        within the grace period is restarted, as after a timeout.
        """
        self._unfinished_msg_id = None
        if (yield from self._wait_until_idle(msg_id, 0.0)):
            return
        yield from self.api.interrupt_kernel(self._kernel_id())
        if (yield from self._wait_until_idle(msg_id, self.interrupt_grace)):
            return
        problem = yield from self._recover(restart=True)
        collector.add_note(
            "An earlier call that was abandoned could not be interrupted, so the kernel was "
            + (
                "restarted: the session's earlier state (variables, imports) is lost."
                if problem is None
                else f"to be restarted, which failed: {problem}"
            )
        )
        if not self._channel_open:
            yield from self._open_channel()

    def _wait_until_idle(self, msg_id: str, seconds: float) -> KernelFlow[bool]:
        """Whether the request ``msg_id`` ended (or its kernel died) within ``seconds``."""
        deadline = self._clock() + seconds
        while True:
            message = yield ReceiveMessage(max(0.0, deadline - self._clock()))
            if message is None:
                return False
            header = message.get("header") or {}
            state = (message.get("content") or {}).get("execution_state")
            if header.get("msg_type") != "status":
                continue
            if state in ("restarting", "dead"):
                return True
            if state == "idle" and (message.get("parent_header") or {}).get("msg_id") == msg_id:
                return True

    def _kernel_alive(self) -> KernelFlow[bool]:
        model = yield from self.api.get_kernel(self._kernel_id())
        return model is not None and model.get("execution_state") not in ("dead", "restarting")

    def _recover(self, *, restart: bool) -> KernelFlow[str | None]:
        """Leave a working kernel for the next call; None when done, else what failed.

        A kernel that died is usually being restarted by the server already (its own
        restarter): it is only restarted here when the server gave up, or when ``restart``.
        """
        self._unfinished_msg_id = None
        yield from self._close_channel()
        # Restarted here or by the server's own restarter: either way a fresh process.
        self._needs_env = True
        try:
            model = yield from self.api.get_kernel(self._kernel_id())
            if model is None:
                yield from self._start_replacement()
            elif restart or model.get("execution_state") == "dead":
                yield from self.api.restart_kernel(self._kernel_id())
        except JupyterExecError as e:
            return str(e)
        return None

    def _start_replacement(self) -> KernelFlow[None]:
        """Start a new kernel in place of one the server no longer has."""
        assert self.kernel_name is not None
        model = yield from self.api.start_kernel(self.kernel_name, env=self.env)
        self.kernel_id = str(model["id"])

    def _set_env(self) -> KernelFlow[None]:
        """Put ``env`` into a new kernel's ``os.environ``, silently, before any call."""
        self._needs_env = False
        if not self.env:
            return
        content = {
            "code": f"__import__('os').environ.update({self.env!r})",
            "silent": True,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        request = shell_request("execute_request", content, self._client_session)
        yield SendMessage(request)
        yield from self._wait_until_idle(request["header"]["msg_id"], READY_TIMEOUT)

    # -- the websocket -------------------------------------------------------------------

    def _open_channel(self) -> KernelFlow[None]:
        path = self.api.channels_path(self._kernel_id(), self._client_session)
        yield OpenChannel(path)
        self._channel_open = True
        yield from self._wait_until_answering()
        if self._needs_env:
            yield from self._set_env()

    def _wait_until_answering(self) -> KernelFlow[None]:
        """Ask for kernel_info until the kernel answers, for at most ``READY_TIMEOUT`` s.

        A kernel the server is still restarting (after a death) can lose a request sent to
        it, and an execute_request lost that way would only end with its timeout.
        """
        deadline = self._clock() + READY_TIMEOUT
        while (remaining := deadline - self._clock()) > 0:
            request = shell_request("kernel_info_request", {}, self._client_session)
            msg_id = request["header"]["msg_id"]
            yield SendMessage(request)
            attempt_end = self._clock() + min(remaining, READY_ASK_INTERVAL)
            # Both channels must answer (as jupyter_server's own "nudge" checks): a reply on
            # shell alone leaves a call's output and its end, which come on IOPub, unseen.
            answered: set[str] = set()
            while (left := attempt_end - self._clock()) > 0:
                message = yield ReceiveMessage(left)
                if message is None:
                    break
                parent = message.get("parent_header") or {}
                channel = message.get("channel")
                if parent.get("msg_id") == msg_id and channel in ("shell", "iopub"):
                    answered.add(channel)
                    if len(answered) == 2:
                        return
        # Not answering: the call that follows reports what happens to it.

    def _close_channel(self) -> KernelFlow[None]:
        if self._channel_open:
            self._channel_open = False
            yield CloseChannel()
        # A websocket that comes back with its session id gets the server's buffered
        # connection (jupyter_server and Kernel Gateway keep one per kernel and session id
        # while a client is away), whose sockets can belong to the process before a death or
        # restart: a call sent on it would be lost. A new id gets a new connection.
        self._client_session = uuid.uuid4().hex

    def _kernel_id(self) -> str:
        if self.kernel_id is None:
            raise ExecutorClosedError("The executor has no kernel: start() starts one.")
        return self.kernel_id
