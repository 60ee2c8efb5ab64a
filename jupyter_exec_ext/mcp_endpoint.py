"""MCP over Streamable HTTP at ``{base_url}agent-sessions/mcp``, inside the server.

The tools are the client package's (:mod:`jupyter_exec_client.mcp_tools`, one definition for
both transports), served by the official SDK's ``StreamableHTTPSessionManager`` and backed
by the session manager directly. A tornado handler, behind the server's authentication and
authorizer like every route, hands each request to the SDK as an ASGI call. Needs the
server's ``[mcp]`` extra (the ``mcp`` SDK, Pillow and jupyter-exec-client); without it the
route is absent and the log says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from . import images
from .handlers import AUTH_RESOURCE
from .manager import AgentSessionManager
from .workspace import OpenedFile

try:
    from jupyter_exec_client.mcp_tools import (
        EventCallback,
        McpTools,
        ToolError,
        build_mcp_server,
    )
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
except ImportError as error:  # the [mcp] extra is not installed
    MISSING: ImportError | None = error
else:
    MISSING = None

#: Route of the endpoint, relative to the server's base_url.
MCP_ROUTE = r"/agent-sessions/mcp/?"
#: Bytes of a captured file ``resources/read`` returns at most (a model reads no more).
MAX_RESOURCE_BYTES = 8_000_000


def _tool_error(error: web.HTTPError, session_id: str | None = None) -> ToolError:
    """The tool error a manager's HTTP error means for a model."""
    message = error.log_message or str(error)
    if error.status_code == 404 and message.startswith("Agent session"):
        return ToolError(
            f"Session {session_id} does not exist (it was closed or deleted, or never "
            "existed): create_session makes a new one, list_sessions shows the live ones."
        )
    return ToolError(message)


class ManagerToolBackend:
    """The MCP tools' backend: the session manager, called in the server's own loop."""

    def __init__(self, manager: AgentSessionManager) -> None:
        """Serve the sessions of ``manager``."""
        self.manager = manager

    async def create_session(
        self, name: str | None, kernel_name: str | None, env: dict[str, str] | None
    ) -> dict[str, Any]:
        """Start a session."""
        try:
            return await self.manager.create_session(kernel_name=kernel_name, name=name, env=env)
        except web.HTTPError as e:
            raise _tool_error(e) from e

    async def list_sessions(self) -> list[dict[str, Any]]:
        """The live sessions."""
        return self.manager.list_sessions()

    async def close_session(self, session_id: str) -> None:
        """Delete a session."""
        try:
            await self.manager.delete_session(session_id)
        except web.HTTPError as e:
            raise _tool_error(e, session_id) from e

    async def execute(
        self, session_id: str, code: str, timeout: float, on_event: EventCallback | None
    ) -> dict[str, Any]:
        """Run code; its events go to ``on_event`` as the execution records them."""
        try:
            if on_event is None:
                return await self.manager.execute(session_id, code, timeout=timeout)
            execution = self.manager.start_execution(
                session_id, code, timeout=timeout, background=False
            )
        except web.HTTPError as e:
            raise _tool_error(e, session_id) from e
        reader = execution.log.open_reader(0)
        try:
            while True:
                events = execution.events_after(reader.seq)
                for event in events:
                    await on_event(event)
                if events:
                    execution.log.advance(reader, events[-1]["seq"])
                elif execution.done:
                    assert execution.result is not None
                    return execution.result
                else:
                    await execution.changed(60)
        except asyncio.CancelledError:
            # The client gave the call up: interrupt it, as a dropped REST stream is.
            if execution.task is not None and not execution.task.done():
                execution.task.cancel()
            raise
        finally:
            execution.log.close_reader(reader)

    async def interrupt(self, session_id: str) -> None:
        """Interrupt the session."""
        try:
            await self.manager.interrupt(session_id)
        except web.HTTPError as e:
            raise _tool_error(e, session_id) from e

    async def restart(self, session_id: str) -> dict[str, Any]:
        """Restart its kernel."""
        try:
            return await self.manager.restart(session_id)
        except web.HTTPError as e:
            raise _tool_error(e, session_id) from e

    def _read(self, session_id: str, path: str) -> dict[str, Any] | OpenedFile:
        try:
            return self.manager.read_workspace(session_id, path)
        except web.HTTPError as e:
            raise _tool_error(e, session_id) from e

    async def list_files(self, session_id: str, path: str) -> dict[str, Any]:
        """A folder's listing."""
        found = self._read(session_id, path)
        if isinstance(found, OpenedFile):
            found.handle.close()
            raise ToolError(f"{path!r} is a file, not a folder: read it with read_file")
        return found

    async def read_file(self, session_id: str, path: str, max_bytes: int) -> tuple[bytes, int]:
        """The start of a workspace file."""
        found = self._read(session_id, path)
        if not isinstance(found, OpenedFile):
            raise ToolError(f"{path!r} is a folder, not a file: list it with list_files")
        with found.handle:
            return found.handle.read(max_bytes), found.size

    async def write_file(self, session_id: str, path: str, data: bytes) -> dict[str, Any]:
        """Write a workspace file (atomically, as an upload)."""
        try:
            upload = self.manager.start_upload(session_id, path, len(data))
            try:
                upload.write(data)
                return self.manager.finish_upload(upload)[1]
            finally:
                upload.discard()
        except web.HTTPError as e:
            raise _tool_error(e, session_id) from e

    async def get_image(
        self, session_id: str, file_id: str, max_size: int | None
    ) -> tuple[bytes, str]:
        """A captured file; an image downscaled off the loop."""
        try:
            stored = self.manager.get_file(session_id, file_id)
            handle = stored.open()
        except web.HTTPError as e:
            if e.status_code == 404 and "File not found" in (e.log_message or ""):
                raise ToolError(f"No file {file_id} in session {session_id}.") from e
            raise _tool_error(e, session_id) from e
        except OSError as e:
            raise ToolError(f"No file {file_id} in session {session_id}.") from e
        with handle:
            if max_size is None or not stored.mime_type.startswith("image/"):
                if stored.size > MAX_RESOURCE_BYTES:
                    raise ToolError(f"File {file_id} is {stored.size} bytes: too large to send.")
                return handle.read(), stored.mime_type
            try:
                return await asyncio.to_thread(images.downscale, handle, stored.mime_type, max_size)
            except (images.ImagesUnavailableError, images.NotAnImageError) as e:
                raise ToolError(str(e)) from e


class McpEndpoint:
    """The endpoint's lifetime: the SDK's session manager, run while the server runs."""

    def __init__(self, manager: AgentSessionManager, log: logging.Logger) -> None:
        """Serve ``manager``'s sessions; nothing runs before :meth:`start`."""
        assert MISSING is None
        tools = McpTools(ManagerToolBackend(manager), implicit_session=False)
        self.session_manager = StreamableHTTPSessionManager(
            build_mcp_server(tools), json_response=False, stateless=False
        )
        self.log = log
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Enter the SDK manager's ``run()`` in a task of the server's loop (once)."""
        if self._task is not None:
            await self._ready.wait()
            return
        started = self._ready

        async def run() -> None:
            async with self.session_manager.run():
                started.set()
                await self._stop.wait()

        self._task = asyncio.ensure_future(run())
        await started.wait()

    async def ensure_started(self) -> None:
        """Start on first use where the host never ran the extension's start hook (servers
        started by ``start_app`` alone, as pytest-jupyter's)."""
        if not self._ready.is_set():
            await self.start()

    async def stop(self) -> None:
        """Leave ``run()``: open MCP sessions and their streams end."""
        if self._task is None:
            return
        self._stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self._task, 10)
        self._task = None


class McpHandler(APIHandler):
    """``{base_url}agent-sessions/mcp``: Streamable HTTP, each request handed to the SDK."""

    auth_resource = AUTH_RESOURCE
    _closed: asyncio.Event | None = None
    _flush_scheduled = False

    @property
    def endpoint(self) -> McpEndpoint:
        """The running endpoint."""
        endpoint: McpEndpoint = self.settings["agent_sessions_mcp"]
        return endpoint

    @web.authenticated
    @authorized(action="execute")
    async def post(self) -> None:
        """A JSON-RPC message: its answer as JSON or an SSE stream (progress, then result)."""
        await self._handle()

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """The session's stream of server-sent messages."""
        await self._handle()

    @web.authenticated
    @authorized(action="execute")
    async def delete(self) -> None:
        """End an MCP session (its agent sessions stay: close them with close_session)."""
        await self._handle()

    async def _handle(self) -> None:
        self._closed = asyncio.Event()
        request = self.request
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": request.version.removeprefix("HTTP/"),
            "method": request.method,
            "scheme": request.protocol,
            "path": request.path,
            "raw_path": request.path.encode(),
            "query_string": request.query.encode(),
            "root_path": "",
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in request.headers.get_all()
            ],
            "client": (request.remote_ip, 0),
            "server": None,
        }
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.body or b"", "more_body": False}
            assert self._closed is not None
            await self._closed.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.set_status(message["status"])
                self.clear_header("Content-Type")
                for name, value in message.get("headers", []):
                    self.add_header(name.decode("latin-1"), value.decode("latin-1"))
                if _is_event_stream(message.get("headers", [])):
                    # Events are small and must leave at once (no Nagle delay).
                    stream = getattr(request.connection, "stream", None)
                    if stream is not None:
                        stream.set_nodelay(True)
            elif message["type"] == "http.response.body" and not self._closed_now():
                body = message.get("body", b"")
                if body:
                    self.write(body)
                if message.get("more_body"):
                    self._flush_soon()

        await self.endpoint.ensure_started()
        await self.endpoint.session_manager.handle_request(scope, receive, send)
        if not self._finished and not self._closed_now():
            self.finish()

    def _flush_soon(self) -> None:
        """Send what was written once the loop is done with its ready callbacks: an answer
        whose end follows at once (the common case) leaves in one write, not two."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        if self._finished or self._closed_now():
            return
        flushed = self.flush()
        flushed.add_done_callback(self._flushed)

    def _flushed(self, future: asyncio.Future[None]) -> None:
        if future.exception() is not None:  # the client went away
            self.on_connection_close()

    def _closed_now(self) -> bool:
        return self._closed is not None and self._closed.is_set()

    def on_connection_close(self) -> None:
        """Tell the SDK the client went away (it cancels the call)."""
        if self._closed is not None:
            self._closed.set()


def _is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(b"text/event-stream")
        for name, value in headers
    )


def mcp_handlers() -> list[tuple[str, type[web.RequestHandler]]]:
    """The endpoint's route, or none when the ``[mcp]`` extra is missing."""
    return [] if MISSING is not None else [(MCP_ROUTE, McpHandler)]
