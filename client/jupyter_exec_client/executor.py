"""The executors: AutoGen's ``JupyterCodeExecutor`` API, blocking and async, on one core."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload

from ._executor_core import Backend, ExecutorCore
from ._kernel_protocol import KernelFlow
from ._transport import SyncTransport, run_async, run_sync
from .blocks import CodeBlockLike, IPythonCodeResult, MarkdownCodeExtractor
from .connection import JupyterConnectable, JupyterConnectionInfo, as_connection_info
from .errors import ExecutorClosedError, JupyterExecError
from .execution import AsyncExecution, Execution
from .outputs import CodeError, Display, OutputCallbacks

__all__ = ["AsyncJupyterCodeExecutor", "JupyterCodeExecutor"]

T = TypeVar("T")


class _ExecutorBase:
    """What both faces share: the arguments, the core, the transport, the read-only state."""

    def __init__(
        self,
        jupyter_server: JupyterConnectable | JupyterConnectionInfo,
        kernel_name: str = "python3",
        timeout: int | float = 60,
        output_dir: str | PathLike[str] = ".",
        *,
        fallback: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        """Check the arguments and prepare the connection; nothing is sent yet."""
        self._core = ExecutorCore(
            as_connection_info(jupyter_server),
            kernel_name,
            timeout,
            output_dir,
            fallback=fallback,
            env=env,
        )
        # Holding the server keeps a LocalJupyterServer passed inline alive (and running)
        # as long as its executor.
        self._jupyter_server = jupyter_server
        self._transport = SyncTransport(self._core.connection_info)
        self._code_extractor = MarkdownCodeExtractor()
        # As given (AutoGen's `_output_dir`); the core keeps it resolved.
        self._output_dir_as_given = Path(output_dir)

    @property
    def code_extractor(self) -> MarkdownCodeExtractor:
        """Finds the markdown code blocks in an agent's message."""
        return self._code_extractor

    @property
    def connection_info(self) -> JupyterConnectionInfo:
        """The server the executor's session lives on."""
        return self._core.connection_info

    @property
    def kernel_name(self) -> str:
        """The kernel spec of the session's kernel."""
        return self._core.kernel_name

    @property
    def timeout(self) -> float:
        """Seconds a code block may run before the server interrupts it."""
        return self._core.timeout

    @property
    def output_dir(self) -> Path:
        """The folder images, HTML and full texts are saved to (absolute)."""
        return self._core.output_dir

    @property
    def session_id(self) -> str | None:
        """The id of the executor's agent session on the server (None when it has none, as
        on a server without the agent-session API)."""
        return self._core.session_id

    @property
    def kernel_id(self) -> str | None:
        """The id of the kernel code runs in, as ``api/kernels`` lists it (None when none)."""
        return self._core.kernel_id

    @property
    def backend(self) -> Backend | None:
        """``"agent-sessions"`` (the server's extension) or ``"kernels"`` (a plain server's
        kernels API and kernel websocket); None before the first start."""
        return self._core.backend

    @property
    def closed(self) -> bool:
        """Whether the executor was stopped."""
        return self._core.state == "closed"

    # AutoGen's executor keeps its arguments in these attributes, and its tests and code built
    # on it read them: the same values, read-only.

    @property
    def _timeout(self) -> float:
        return self._core.timeout

    @property
    def _kernel_name(self) -> str:
        return self._core.kernel_name

    @property
    def _output_dir(self) -> Path:
        """The ``output_dir`` argument as a ``Path``, relative if it was given so."""
        return self._output_dir_as_given

    @property
    def _connection_info(self) -> JupyterConnectionInfo:
        return self._core.connection_info

    @property
    def _kernel_id(self) -> str | None:
        return self._core.kernel_id

    def _session_for(self, session_id: str | None) -> str:
        """The session an execution handle is for: the given one, else the executor's."""
        session_id = session_id or self._core.session_id
        if session_id is None:
            raise ExecutorClosedError(
                "The executor has no agent session: give the session_id of the execution."
            )
        return session_id


class JupyterCodeExecutor(_ExecutorBase):
    """Runs code blocks in a stateful kernel of its own on a Jupyter server (blocking).

    The agent session is created at construction and deleted by :meth:`stop` (or at the
    end of a ``with`` block). ``jupyter_server`` is a :class:`LocalJupyterServer`, anything
    with a ``connection_info``, or a :class:`JupyterConnectionInfo`. ``timeout`` (seconds, at
    least 1) limits each block: the server interrupts it and the result keeps what it
    printed. Rich outputs are saved into ``output_dir``, which must exist. ``env`` adds
    environment variables to the session's kernel (kept across restarts; the server shows
    only their names).

    :meth:`upload`, :meth:`download`, :meth:`list_files` and :meth:`delete_file` move files
    in and out of the session's working folder, the kernel's current directory.

    A Jupyter server without the agent-session API (a plain ``jupyter server``, Kernel
    Gateway) is used through its standard kernels API and a kernel websocket, with the same
    results (this needs ``pip install "jupyter-exec-client[websocket]"``); ``fallback=False``
    raises :class:`ExtensionMissingError` instead.
    """

    def __init__(
        self,
        jupyter_server: JupyterConnectable | JupyterConnectionInfo,
        kernel_name: str = "python3",
        timeout: int | float = 60,
        output_dir: str | PathLike[str] = ".",
        *,
        fallback: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        """Check the arguments and create the agent session on the server."""
        super().__init__(
            jupyter_server, kernel_name, timeout, output_dir, fallback=fallback, env=env
        )
        try:
            self._run(self._core.start())
        except BaseException:
            self._transport.close()
            raise

    def _run(self, flow: KernelFlow[T]) -> T:
        return run_sync(flow, self._transport)

    def execute_code_blocks(self, code_blocks: Iterable[CodeBlockLike]) -> IPythonCodeResult:
        """Run the blocks in order; ``exit_code`` is 0 when all succeeded, else 1.

        After a failing block the rest are not run; the output of the earlier ones is kept.
        """
        return self._run(self._core.execute_code_blocks(code_blocks))

    def run(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        on_display: Callable[[Display], None] | None = None,
        on_result: Callable[[Display], None] | None = None,
        on_error: Callable[[CodeError], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> IPythonCodeResult:
        """Run Python ``code``, calling back as its output arrives; return the whole result.

        ``on_stdout``/``on_stderr`` get printed text as it is printed, ``on_display`` and
        ``on_result`` a :class:`Display` whose files are already saved in ``output_dir``,
        ``on_error`` a :class:`CodeError`, ``on_note`` the server's own messages (a
        timeout, a kernel death). The result is what ``execute_code_blocks`` returns for
        the same code. ``timeout`` defaults to the executor's. Ctrl-C (or an exception in
        a callback) drops the connection, and the server interrupts the code.
        """
        callbacks = OutputCallbacks(
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            on_display=on_display,
            on_result=on_result,
            on_error=on_error,
            on_note=on_note,
        )
        return self._run(self._core.run(code, timeout, callbacks))

    @overload
    def start(self) -> None: ...

    @overload
    def start(self, code: str, *, timeout: float | None = None) -> Execution: ...

    def start(self, code: str | None = None, *, timeout: float | None = None) -> Execution | None:
        """Queue ``code`` as a background execution and return its :class:`Execution` at once;
        without code, open a new agent session after :meth:`stop` (as before).

        The run goes on whatever happens to this process or its connection (a blocking
        call is interrupted when its client goes away; this one is not). ``timeout``
        defaults to the executor's. Needs the server's agent-session API: on a plain
        server it raises :class:`BackgroundUnsupportedError`.
        """
        if code is None:
            self._run(self._core.start())
            return None
        model = self._run(self._core.start_execution(code, timeout))
        return Execution(self._core, self._transport, str(model["session_id"]), str(model["id"]))

    def execution(self, execution_id: str, session_id: str | None = None) -> Execution:
        """A handle on a background execution, of this executor's session or another's
        (``session_id``), to follow one started elsewhere (another process)."""
        return Execution(self._core, self._transport, self._session_for(session_id), execution_id)

    def restart(self) -> None:
        """Give the session a fresh kernel: every variable is gone."""
        self._run(self._core.restart())

    def upload(
        self, local_path: str | PathLike[str], remote_path: str | None = None
    ) -> dict[str, Any]:
        """Copy a local file into the session's working folder (``remote_path`` relative to
        it, by default the file's name; folders are created); return the file's entry."""
        return self._run(self._core.upload(local_path, remote_path))

    def download(self, remote_path: str, local_path: str | PathLike[str] | None = None) -> Path:
        """Copy a file of the working folder to ``local_path`` (by default into
        ``output_dir``), replacing what is there; return where it went."""
        return self._run(self._core.download(remote_path, local_path))

    def list_files(self, path: str = "") -> list[dict[str, Any]]:
        """The entries (``name``, ``path``, ``type``, ``size``, ``modified``) of a folder of
        the working folder; the working folder itself by default."""
        return self._run(self._core.list_files(path))

    def delete_file(self, path: str) -> None:
        """Delete a file, or a folder with everything in it, of the working folder."""
        self._run(self._core.delete_file(path))

    def interrupt(self) -> None:
        """Interrupt the running code (call it from another thread)."""
        self._run(self._core.interrupt())


    def stop(self) -> None:
        """Delete the agent session and close the connection; calling it again does nothing."""
        try:
            self._run(self._core.stop())
        finally:
            self._transport.close()

    def __enter__(self) -> JupyterCodeExecutor:
        """The executor itself; its session is deleted when the block ends."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the executor."""
        self.stop()


class AsyncJupyterCodeExecutor(_ExecutorBase):
    """The same executor for asyncio code, shaped like autogen-ext's ``CodeExecutor``.

    Nothing is sent before :meth:`start` (or ``async with``, or the first execution).
    Cancelling :meth:`execute_code_blocks` (or its ``cancellation_token``) interrupts the
    kernel, so the session is free again at once.
    """

    async def _run(self, flow: KernelFlow[T]) -> T:
        return await run_async(flow, self._transport)

    @overload
    async def start(self) -> None: ...

    @overload
    async def start(self, code: str, *, timeout: float | None = None) -> AsyncExecution: ...

    async def start(
        self, code: str | None = None, *, timeout: float | None = None
    ) -> AsyncExecution | None:
        """Create the agent session (a new one after :meth:`stop`); with ``code``, queue it
        as a background execution and return its :class:`AsyncExecution` at once."""
        if code is not None:
            model = await self._run(self._core.start_execution(code, timeout))
            return AsyncExecution(
                self._core, self._transport, str(model["session_id"]), str(model["id"])
            )
        try:
            await self._run(self._core.start())
        except BaseException:
            # Nothing to stop later: close the connection now, as the blocking executor does.
            self._transport.close()
            raise
        return None

    async def run(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        on_display: Callable[[Display], None] | None = None,
        on_result: Callable[[Display], None] | None = None,
        on_error: Callable[[CodeError], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> IPythonCodeResult:
        """Run Python ``code``, calling back (in the event loop) as its output arrives;
        return the whole result. As :meth:`JupyterCodeExecutor.run`; cancelling the call
        drops the connection and interrupts the kernel."""
        callbacks = OutputCallbacks(
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            on_display=on_display,
            on_result=on_result,
            on_error=on_error,
            on_note=on_note,
        )
        task = asyncio.ensure_future(self._run(self._core.run(code, timeout, callbacks)))
        try:
            return await task
        except asyncio.CancelledError:
            await self._interrupt_after_cancel()
            raise

    def execution(self, execution_id: str, session_id: str | None = None) -> AsyncExecution:
        """A handle on a background execution, of this executor's session or another's
        (``session_id``), to follow one started elsewhere (another process)."""
        return AsyncExecution(
            self._core, self._transport, self._session_for(session_id), execution_id
        )

    async def execute_code_blocks(
        self, code_blocks: Iterable[CodeBlockLike], cancellation_token: Any = None
    ) -> IPythonCodeResult:
        """Run the blocks in order; ``exit_code`` is 0 when all succeeded, else 1.

        ``cancellation_token`` is an autogen-core ``CancellationToken`` (anything with
        ``link_future``); cancelling it cancels the call and interrupts the kernel.
        """
        task = asyncio.ensure_future(self._run(self._core.execute_code_blocks(list(code_blocks))))
        if cancellation_token is not None:
            cancellation_token.link_future(task)
        try:
            result = await task
        except asyncio.CancelledError:
            await self._interrupt_after_cancel()
            raise
        return result

    async def _interrupt_after_cancel(self) -> None:
        """Stop the abandoned code, so the session is not busy with it for its whole timeout."""
        if self._core.state != "open":
            return
        # The call is cancelled either way; a failed interrupt only delays the next call.
        with contextlib.suppress(JupyterExecError):
            await self._run(self._core.interrupt())

    async def restart(self) -> None:
        """Give the session a fresh kernel: every variable is gone."""
        await self._run(self._core.restart())

    async def upload(
        self, local_path: str | PathLike[str], remote_path: str | None = None
    ) -> dict[str, Any]:
        """Copy a local file into the session's working folder; see the blocking executor."""
        return await self._run(self._core.upload(local_path, remote_path))

    async def download(
        self, remote_path: str, local_path: str | PathLike[str] | None = None
    ) -> Path:
        """Copy a file of the working folder to ``local_path``; return where it went."""
        return await self._run(self._core.download(remote_path, local_path))

    async def list_files(self, path: str = "") -> list[dict[str, Any]]:
        """The entries of a folder of the working folder (by default the folder itself)."""
        return await self._run(self._core.list_files(path))

    async def delete_file(self, path: str) -> None:
        """Delete a file, or a folder with everything in it, of the working folder."""
        await self._run(self._core.delete_file(path))

    async def interrupt(self) -> None:
        """Interrupt the running code."""
        await self._run(self._core.interrupt())

    async def stop(self) -> None:
        """Delete the agent session and close the connection; calling it again does nothing."""
        try:
            await self._run(self._core.stop())
        finally:
            self._transport.close()

    async def __aenter__(self) -> AsyncJupyterCodeExecutor:
        """Start the executor."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the executor."""
        await self.stop()
