"""``jupyter-exec mcp``: the MCP tools over stdio, served from a server's REST API.

The tools (:mod:`jupyter_exec_client.mcp_tools`) run against the agent-session API of the
server at ``--url`` (or ``$JUPYTER_EXEC_URL``), or of a local server started for the
command's lifetime. The sessions this process creates are deleted when it exits, however
its client leaves (stdin closed, SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from mcp.server.stdio import stdio_server

from ._api import AgentSessionsAPI, Flow
from ._transport import SyncTransport, run_async
from .connection import JupyterConnectionInfo
from .errors import (
    APIError,
    JupyterExecError,
    SessionNotFoundError,
    WorkspaceFileNotFoundError,
    WorkspacePathError,
)
from .mcp_tools import EventCallback, McpTools, ToolError, build_mcp_server

T = TypeVar("T")


class RestToolBackend:
    """The tools' backend over the agent-session REST API of one server."""

    def __init__(self, connection_info: JupyterConnectionInfo, kernel_name: str) -> None:
        """Talk to the server of ``connection_info``; new sessions run ``kernel_name``."""
        self.api = AgentSessionsAPI(connection_info)
        self.transport = SyncTransport(connection_info)
        self.kernel_name = kernel_name
        #: The sessions this process created, deleted by :meth:`close`.
        self.created: set[str] = set()

    async def _call(self, call: Flow[T] | Awaitable[T], session_id: str | None = None) -> T:
        try:
            if inspect.isawaitable(call):
                return await call
            return await run_async(call, self.transport)
        except SessionNotFoundError as e:
            self.created.discard(session_id or "")
            raise ToolError(
                f"Session {session_id} does not exist (it was closed or deleted, or never "
                "existed): create_session makes a new one, list_sessions shows the live ones."
            ) from e
        except (WorkspacePathError, WorkspaceFileNotFoundError) as e:
            raise ToolError(e.message) from e
        except APIError as e:
            raise ToolError(f"The server refused: {e.message}") from e
        except JupyterExecError as e:
            raise ToolError(str(e)) from e

    async def create_session(
        self, name: str | None, kernel_name: str | None, env: dict[str, str] | None
    ) -> dict[str, Any]:
        """Start a session, remembered to be deleted at exit."""
        model = await self._call(
            self.api.create_session(kernel_name or self.kernel_name, name=name, env=env)
        )
        self.created.add(str(model["id"]))
        return model

    async def list_sessions(self) -> list[dict[str, Any]]:
        """The server's live sessions."""
        return await self._call(self.api.list_sessions())

    async def close_session(self, session_id: str) -> None:
        """Delete a session."""
        await self._call(self.api.delete_session(session_id), session_id)
        self.created.discard(session_id)

    async def execute(
        self,
        session_id: str,
        code: str,
        timeout: float,  # noqa: ASYNC109 - the server interrupts the code
        on_event: EventCallback | None,
    ) -> dict[str, Any]:
        """Run code: one blocking request, or a streamed one when events are wanted."""
        if on_event is None:
            return await self._call(self.api.execute(session_id, code, timeout), session_id)
        return await self._call(self._streamed(session_id, code, timeout, on_event), session_id)

    async def _streamed(
        self,
        session_id: str,
        code: str,
        timeout: float,  # noqa: ASYNC109 - the server interrupts the code
        on_event: EventCallback,
    ) -> dict[str, Any]:
        stream = await run_async(
            self.api.execute_streamed(session_id, code, timeout), self.transport, keep_streams=True
        )
        try:
            while True:
                event = await run_async(self.api.read_event(stream), self.transport)
                if event is None:
                    raise ToolError("The server's stream of events ended before the call did.")
                if event["type"] == "done":
                    await run_async(self.api.end_stream(stream), self.transport)
                    return dict(event["result"])
                if event["type"] != "heartbeat":
                    await on_event(event)
        finally:
            # A call given up (its client cancelled it) drops the connection: the server
            # then interrupts the code. A stream read to its end is back in the pool.
            stream.close()

    async def interrupt(self, session_id: str) -> None:
        """Interrupt the session."""
        await self._call(self.api.interrupt(session_id), session_id)

    async def restart(self, session_id: str) -> dict[str, Any]:
        """Restart the session's kernel."""
        return await self._call(self.api.restart(session_id), session_id)

    async def list_files(self, session_id: str, path: str) -> dict[str, Any]:
        """A folder's listing."""
        return await self._call(self.api.list_workspace(session_id, path), session_id)

    async def read_file(self, session_id: str, path: str, max_bytes: int) -> tuple[bytes, int]:
        """The start of a workspace file (streamed to a temporary file, never whole in memory)."""
        with tempfile.TemporaryDirectory(prefix="jupyter-exec-mcp-") as folder:
            local = Path(folder, "file")
            await self._call(self.api.download_workspace_file(session_id, path, local), session_id)
            return await asyncio.to_thread(_head, local, max_bytes)

    async def write_file(self, session_id: str, path: str, data: bytes) -> dict[str, Any]:
        """Upload ``data`` as a workspace file."""
        with tempfile.TemporaryDirectory(prefix="jupyter-exec-mcp-") as folder:
            local = Path(folder, "file")
            await asyncio.to_thread(local.write_bytes, data)
            return await self._call(self.api.upload(session_id, local, path), session_id)

    async def get_image(
        self, session_id: str, file_id: str, max_size: int | None
    ) -> tuple[bytes, str]:
        """A captured file, an image downscaled by the server."""
        try:
            return await self._call(self.api.file_bytes(session_id, file_id, max_size), session_id)
        except ToolError as e:
            raise ToolError(f"File {file_id} of session {session_id}: {e}") from e

    async def close(self) -> None:
        """Delete the sessions this process created; close the connections."""
        for session_id in list(self.created):
            with contextlib.suppress(ToolError):
                await self.close_session(session_id)
        self.transport.close()


async def serve(connection_info: JupyterConnectionInfo, kernel_name: str) -> None:
    """Serve the tools over stdin/stdout until the client closes stdin or sends SIGTERM."""
    backend = RestToolBackend(connection_info, kernel_name)
    tools = McpTools(backend, implicit_session=True)
    server = build_mcp_server(tools)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    except asyncio.CancelledError:
        pass
    finally:
        # Shielded: a second SIGTERM or the loop's end must not leave kernels behind.
        with anyio.CancelScope(shield=True):
            await backend.close()


def _head(path: Path, max_bytes: int) -> tuple[bytes, int]:
    """The first ``max_bytes`` of a file, and its size."""
    with path.open("rb") as file:
        return file.read(max_bytes), path.stat().st_size
