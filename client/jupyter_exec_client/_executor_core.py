"""What an executor does, shared by the sync and the async executor: flows, no network I/O.

The core owns one agent session and turns code blocks into an :class:`IPythonCodeResult`:
blocks run in order until one fails, rich outputs are downloaded into ``output_dir``, and
the server's file markers in the text become the paths of the saved files.

A server without the agent-session API (a plain Jupyter server, Kernel Gateway) gets a
second backend, a :class:`~jupyter_exec_client._kernel_protocol.KernelProtocolSession`: one
kernel driven over its websocket, giving results of the same shape (its files already
written), so everything after the execution is shared.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterable
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from ._api import AgentSessionsAPI, CloseStream, LineStream
from ._contents_api import ContentsAPI
from ._kernel_output import new_output_path
from ._kernel_protocol import KernelFlow, KernelProtocolSession
from .blocks import CodeBlockLike, IPythonCodeResult, code_for_kernel
from .connection import JupyterConnectionInfo
from .errors import (
    APIError,
    BackgroundUnsupportedError,
    ExecutorClosedError,
    ExtensionMissingError,
    ServerConnectionError,
    SessionLostError,
    SessionNotFoundError,
)
from .outputs import OutputCallbacks, OutputDispatcher

State = Literal["new", "open", "closed"]
#: Names of environment variables, as the server accepts them.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: ``agent-sessions``: the extension's API; ``kernels``: a plain server's kernels API and
#: kernel websocket.
Backend = Literal["agent-sessions", "kernels"]
#: Seconds one long poll of a background execution waits on the server before asking again.
_WAIT_POLL = 60.0
#: Times a followed execution's stream of events is opened again after a drop, in a row.
_RECONNECTS = 5
#: The result's text when the session was gone: an agent reads it and runs its code again.
LOST_SESSION_MESSAGE = (
    "The agent session {old} was lost (the server restarted, or the session was deleted), "
    "and every variable, import and definition in it went with it. A new session {new} was "
    "started in its place. This code was not run: run it again, with whatever it needs "
    "(imports, data, definitions) set up anew."
)


class ExecutorCore:
    """One agent session (or one kernel) and the rules for running code blocks in it.

    States: ``new`` (no session yet), ``open`` (a session on the server), ``closed``
    (stopped; :meth:`start` opens it again with a fresh session). With ``fallback``, a
    server without the agent-session API is used through its kernels API instead.
    """

    def __init__(
        self,
        connection_info: JupyterConnectionInfo,
        kernel_name: str,
        timeout: float,
        output_dir: str | PathLike[str],
        *,
        fallback: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        """Check the arguments; nothing is sent before :meth:`start`."""
        for variable, value in (env or {}).items():
            if not (isinstance(variable, str) and isinstance(value, str)):
                raise ValueError("env must map variable names to string values")
            if not _ENV_NAME.match(variable):
                raise ValueError(
                    f"Invalid environment variable name {variable!r}: use letters, digits and "
                    "'_', not starting with a digit"
                )
        if timeout < 1:
            raise ValueError(f"Timeout must be greater than or equal to 1 second, not {timeout}.")
        directory = Path(output_dir)
        if not directory.is_dir():
            raise ValueError(f"Output directory {str(directory)!r} does not exist.")
        self.api = AgentSessionsAPI(connection_info)
        self.kernel_name = kernel_name
        self.timeout = timeout
        # Resolved once: the paths handed out stay right if the process changes directory.
        self.output_dir = directory.resolve()
        self.fallback = fallback
        self.env = dict(env or {})
        # The fallback's way to move files: a plain server's Contents API.
        self.contents = ContentsAPI(connection_info)
        self.session_id: str | None = None
        self.state: State = "new"
        # Set once the server turned out to have no agent-session API.
        self.kernels: KernelProtocolSession | None = None
        self.backend: Backend | None = None
        self._kernel_id: str | None = None

    @property
    def kernel_id(self) -> str | None:
        """The id of the kernel code runs in (None when there is none)."""
        if self.kernels is not None:
            return self.kernels.kernel_id
        return self._kernel_id

    @property
    def connection_info(self) -> JupyterConnectionInfo:
        """The server the session lives on."""
        return self.api.connection_info

    def start(self) -> KernelFlow[None]:
        """Create the agent session, or start the kernel (nothing to do when it is open)."""
        if self.state == "open":
            return
        if self.kernels is None:
            try:
                model = yield from self.api.create_session(self.kernel_name, env=self.env)
            except ExtensionMissingError as missing:
                if not (self.fallback and missing.server_version):
                    raise
                # A Jupyter server without the extension: use its standard kernels API.
                self.kernels = KernelProtocolSession(
                    self.connection_info, self.output_dir, env=self.env
                )
                self.backend = "kernels"
            else:
                self.backend = "agent-sessions"
                self.session_id = str(model["id"])
                self._kernel_id = str(model["kernel_id"])
                self.state = "open"
                return
        yield from self.kernels.start(self.kernel_name)
        self.state = "open"

    def stop(self) -> KernelFlow[None]:
        """Delete the agent session (or shut the kernel down); stopping twice is harmless."""
        session_id, self.session_id = self.session_id, None
        self._kernel_id = None
        self.state = "closed"
        if self.kernels is not None:
            yield from self.kernels.stop()
        if session_id is None:
            return
        # A session already gone (culled, or the server restarted) is as good as deleted.
        with contextlib.suppress(SessionNotFoundError):
            yield from self.api.delete_session(session_id)

    def restart(self) -> KernelFlow[None]:
        """Give the session a fresh kernel; a session the server lost is created anew."""
        self._check_open()
        if self.kernels is not None:
            yield from self.kernels.restart()
            return
        try:
            yield from self.api.restart(self._open_session_id())
        except SessionNotFoundError:
            self.state = "new"
            yield from self.start()

    def interrupt(self) -> KernelFlow[None]:
        """Interrupt the code the session is running."""
        self._check_open()
        if self.kernels is not None:
            yield from self.kernels.interrupt()
            return
        yield from self.api.interrupt(self._open_session_id())

    def execute_code_blocks(
        self, code_blocks: Iterable[CodeBlockLike]
    ) -> KernelFlow[IPythonCodeResult]:
        """Run the blocks in order; stop at the first that fails, keeping earlier output."""
        if self.state == "new":
            yield from self.start()
        self._check_open()
        outputs: list[str] = []
        files: list[str] = []
        changes: list[dict[str, Any]] = []
        for block in code_blocks:
            # A kernel of the kernels backend has no kernel_helper to make pip installs quiet.
            code = code_for_kernel(block.code, block.language, quiet_pip=self.kernels is not None)
            if code is None:
                outputs.append(
                    f"Unsupported language {block.language!r}: this executor runs Python "
                    "blocks (python, py, ipython, or no language) and shell blocks (bash, sh, "
                    "shell). The block was not run."
                )
                return IPythonCodeResult(1, _join(outputs), files, changes)
            if self.kernels is not None:
                result = yield from self.kernels.execute(code, self.timeout)
            else:
                try:
                    result = yield from self.api.execute(
                        self._open_session_id(), code, self.timeout
                    )
                except SessionNotFoundError:
                    outputs.append((yield from self._replace_lost_session()))
                    return IPythonCodeResult(1, _join(outputs), files, changes)
            output, saved = yield from self._save_files(result)
            outputs.append(output)
            files.extend(saved)
            changes.extend(result.get("workspace_changes") or [])
            if result.get("status") != "ok":
                return IPythonCodeResult(1, _join(outputs), files, changes)
        return IPythonCodeResult(0, _join(outputs), files, changes)

    # -- the workspace -------------------------------------------------------------------

    def upload(
        self, local_path: str | PathLike[str], remote_path: str | None = None
    ) -> KernelFlow[dict[str, Any]]:
        """Copy a local file into the session's working folder (by default under its own
        name); return the file's entry (``name``, ``path``, ``type``, ``size``, ``modified``)."""
        local = Path(local_path)
        if not local.is_file():
            raise FileNotFoundError(f"No local file to upload: {local}")
        remote = local.name if remote_path is None else remote_path
        yield from self._open()
        if self.kernels is not None:
            return (yield from self.contents.upload(local, remote))
        return (yield from self.api.upload(self._open_session_id(), local, remote))

    def download(
        self, remote_path: str, local_path: str | PathLike[str] | None = None
    ) -> KernelFlow[Path]:
        """Copy a file of the session's working folder to ``local_path`` (a file, or a folder
        to put it in; by default ``output_dir``), replacing what is there; return the path."""
        name = PurePosixPath(remote_path.rstrip("/")).name
        target = Path(local_path) if local_path is not None else self.output_dir
        if target.is_dir():
            target /= name
        yield from self._open()
        # Into a new file beside the target, renamed over it when complete: a failed
        # download leaves the old file as it was.
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            if self.kernels is not None:
                yield from self.contents.download(remote_path, partial)
            else:
                yield from self.api.download_workspace_file(
                    self._open_session_id(), remote_path, partial
                )
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target.resolve()

    def list_files(self, path: str = "") -> KernelFlow[list[dict[str, Any]]]:
        """The entries of a folder of the session's working folder (its root by default)."""
        yield from self._open()
        if self.kernels is not None:
            listing = yield from self.contents.list_files(path)
        else:
            listing = yield from self.api.list_workspace(self._open_session_id(), path)
        return list(listing["entries"])

    def delete_file(self, path: str) -> KernelFlow[None]:
        """Delete a file, or a folder with everything in it, of the session's working folder."""
        yield from self._open()
        if self.kernels is not None:
            yield from self.contents.delete(path)
        else:
            yield from self.api.delete_workspace_path(self._open_session_id(), path)

    def _open(self) -> KernelFlow[None]:
        """Start the session if it is new; raise when the executor was stopped."""
        if self.state == "new":
            yield from self.start()
        self._check_open()

    # -- streamed and background runs ---------------------------------------------------

    def run(
        self, code: str, timeout: float | None, callbacks: OutputCallbacks
    ) -> KernelFlow[IPythonCodeResult]:
        """Run Python ``code``, calling back as output arrives; return the whole result."""
        yield from self._open()
        timeout = self.timeout if timeout is None else timeout
        if self.kernels is not None:
            dispatcher = OutputDispatcher(callbacks)
            result = yield from self.kernels.execute(
                code, timeout, on_event=dispatcher.handle_saved
            )
        else:
            session_id = self._open_session_id()

            def download(file_id: str) -> KernelFlow[Path]:
                return self.api.download_file(session_id, file_id, self.output_dir)

            dispatcher = OutputDispatcher(callbacks, download)
            try:
                stream = yield from self.api.execute_streamed(session_id, code, timeout)
            except SessionNotFoundError:
                message = yield from self._replace_lost_session()
                if callbacks.on_note is not None:
                    callbacks.on_note(message)
                return IPythonCodeResult(1, message, [], [])
            result = yield from self._follow(stream, dispatcher)
        return (yield from self._code_result(result, dispatcher.saved))

    def _follow(
        self, stream: LineStream, dispatcher: OutputDispatcher
    ) -> KernelFlow[dict[str, Any]]:
        """Dispatch a streamed call's events until its ``done``; return its result."""
        while True:
            event = yield from self.api.read_event(stream)
            if event is None:
                raise ServerConnectionError(
                    self.connection_info.base_url, "the stream of events ended before the call"
                )
            if event["type"] == "done":
                yield from self.api.end_stream(stream)
                return dict(event["result"])
            if event["type"] != "heartbeat":
                yield from dispatcher.handle(event)

    def start_execution(self, code: str, timeout: float | None) -> KernelFlow[dict[str, Any]]:
        """Queue ``code`` as a background execution of the session; return its model."""
        yield from self._open()
        if self.kernels is not None:
            raise BackgroundUnsupportedError(
                f"The server at {self.connection_info.base_url} has no agent-session API, so "
                "code runs over a kernel websocket that lives only as long as this client: "
                "background runs need the jupyter-exec-ext extension on the server. run() "
                "streams output on this server too."
            )
        timeout = self.timeout if timeout is None else timeout
        try:
            return (yield from self.api.start_execution(self._open_session_id(), code, timeout))
        except SessionNotFoundError as lost:
            message = yield from self._replace_lost_session()
            # No execution to hand back: the error says what happened, the next call works.
            raise SessionLostError(
                404, message, method=lost.method, url=lost.url, explanation=message
            ) from lost

    def _replace_lost_session(self) -> KernelFlow[str]:
        """Start a new session for one the server no longer has; return what to tell the user.

        When no new session can be made (the server went down again, it is full) the error
        is raised and the executor keeps the lost id, so the next call finds it gone and
        says so, instead of silently running in a new session.
        """
        old = self.session_id
        self.state = "new"
        try:
            yield from self.start()
        except BaseException:
            self.state = "open"
            raise
        return LOST_SESSION_MESSAGE.format(old=old, new=self.session_id)

    def wait_execution(
        self, session_id: str, execution_id: str, timeout: float | None
    ) -> KernelFlow[IPythonCodeResult]:
        """The result of a background execution once it ended (its files downloaded).

        Raises TimeoutError when it has not ended within ``timeout`` seconds (None: no limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = _WAIT_POLL if deadline is None else deadline - time.monotonic()
            model = yield from self.api.get_execution(
                session_id, execution_id, wait=max(0.0, min(remaining, _WAIT_POLL))
            )
            if model.get("result") is not None:
                return (yield from self._code_result(model["result"], {}))
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Execution {execution_id} is still {model.get('status')} after {timeout:g} s"
                )

    def follow_execution(
        self, session_id: str, execution_id: str, callbacks: OutputCallbacks, after: int = 0
    ) -> KernelFlow[IPythonCodeResult]:
        """Call back with a background execution's events (after ``after``) until it ends;
        return its result, its files saved in the output folder."""

        def download(file_id: str) -> KernelFlow[Path]:
            return self.api.download_file(session_id, file_id, self.output_dir)

        dispatcher = OutputDispatcher(callbacks, download)
        follower = EventFollower(self.api, session_id, execution_id, after)
        while (event := (yield from follower.next_event())) is not None:
            if event["type"] == "done":
                return (yield from self._code_result(event["result"], dispatcher.saved))
            yield from dispatcher.handle(event)
        raise AssertionError("the events ended without done")  # pragma: no cover

    def _code_result(
        self, result: dict[str, Any], saved: dict[str, Path]
    ) -> KernelFlow[IPythonCodeResult]:
        # The text as execute_code_blocks gives it for one block.
        output, files = yield from self._save_files(result, saved)
        return IPythonCodeResult(
            0 if result.get("status") == "ok" else 1,
            _join([output]),
            files,
            list(result.get("workspace_changes") or []),
        )

    def _check_open(self) -> None:
        if self.state != "open":
            raise ExecutorClosedError(
                "The executor was stopped and has no agent session: start() opens a new one."
            )

    def _open_session_id(self) -> str:
        self._check_open()
        if self.session_id is None:
            raise ExecutorClosedError(
                "The executor was stopped and has no agent session: start() opens a new one."
            )
        return self.session_id

    def _save_files(
        self, result: dict[str, Any], already: dict[str, Path] | None = None
    ) -> KernelFlow[tuple[str, list[str]]]:
        """Download the result's files; name them in the text where the server marked them.

        Files of the kernels backend are already written: their ``path`` is taken as is, as
        is that of a file ``already`` saved while the call ran.
        """
        output = str(result.get("output", ""))
        saved: list[str] = []
        for file in result.get("files", []):
            mime_type = str(file["mime_type"])
            if "path" in file or (already and file["id"] in already):
                path = Path(file["path"]) if "path" in file else (already or {})[file["id"]]
                saved.append(str(path))
                note = _saved_note(mime_type, path)
                output = _name_file(output, mime_type, str(file["id"]), note, path)
                continue
            path = new_output_path(self.output_dir, mime_type)
            try:
                yield from self.api.download(str(file["url"]), path)
            except APIError as e:
                note = f"({mime_type} output {file['id']} could not be downloaded: {e.message})"
            else:
                saved.append(str(path))
                note = _saved_note(mime_type, path)
            output = _name_file(output, mime_type, str(file["id"]), note, path)
        return output, saved


def _saved_note(mime_type: str, path: Path) -> str:
    """The words AutoGen's executor uses for a saved output."""
    if mime_type.startswith("image/"):
        return f"Image data saved to {path}"
    if mime_type == "text/html":
        return f"HTML data saved to {path}"
    if mime_type == "text/plain":
        return f"Full output saved to {path}"
    return f"{mime_type} data saved to {path}"


def _name_file(output: str, mime_type: str, file_id: str, note: str, path: Path) -> str:
    """Put ``note`` where the server named the file in ``output``; else add it at the end."""
    marker = f"[{mime_type}: {file_id}]"
    if marker in output:
        return output.replace(marker, note)
    # The server's cut-output marker names the whole text as "... in file <id> ...".
    in_file = f"in file {file_id}"
    if in_file in output:
        return output.replace(in_file, f"saved to {path}")
    separator = "" if not output or output.endswith("\n") else "\n"
    return f"{output}{separator}{note}\n"


def _join(outputs: list[str]) -> str:
    """One text from the outputs of several blocks, a line break between two."""
    return "\n".join(text.rstrip("\n") for text in outputs if text.strip())


class EventFollower:
    """Follows the events of a background execution, opening the stream again after a drop.

    Each :meth:`next_event` flow returns the next output event, the ``done`` event last,
    then None. The stream stays open between flows (drive them with ``keep_streams``), and
    :meth:`close` flow closes it.
    """

    def __init__(self, api: AgentSessionsAPI, session_id: str, execution_id: str, after: int = 0):
        """Follow ``execution_id`` of ``session_id`` from the events after ``after``."""
        self.api = api
        self.session_id = session_id
        self.execution_id = execution_id
        #: The seq of the last event handed out: where a new stream resumes.
        self.seq = after
        self.finished = False
        self._stream: LineStream | None = None

    def next_event(self) -> KernelFlow[dict[str, Any] | None]:
        """The next event (no heartbeats); None once ``done`` was handed out."""
        drops = 0
        while not self.finished:
            try:
                if self._stream is None:
                    self._stream = yield from self.api.execution_events(
                        self.session_id, self.execution_id, self.seq
                    )
                event = yield from self.api.read_event(self._stream)
            except ServerConnectionError:
                event = None
            if event is None:
                # Dropped (a proxy, a sleeping laptop, the server's restart of its side):
                # the execution goes on; ask for what came after the last event seen.
                self._stream = None
                drops += 1
                if drops > _RECONNECTS:
                    raise ServerConnectionError(
                        self.api.connection_info.base_url,
                        f"the events of execution {self.execution_id} stopped coming "
                        f"{_RECONNECTS} times in a row",
                    )
                continue
            if event["type"] == "heartbeat":
                continue
            if isinstance(event.get("seq"), int):
                self.seq = event["seq"]
            if event["type"] == "done":
                self.finished = True
                with contextlib.suppress(ServerConnectionError):
                    yield from self.api.end_stream(self._stream)
            return event
        return None

    def close(self) -> KernelFlow[None]:
        """Stop following: close the stream."""
        stream, self._stream = self._stream, None
        if stream is not None:
            yield CloseStream(stream)
