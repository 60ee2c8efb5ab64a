"""HTTP handlers of the agent-session API: parse, validate, make one manager call, answer."""

from __future__ import annotations

import asyncio
import io
import json
import math
from typing import Any, BinaryIO
from urllib.parse import quote

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from . import images
from .executions import Execution
from .manager import AgentSessionManager
from .spec import validation_error
from .store import StoredFileChangedError
from .workspace import OpenedFile, Upload

#: Agent sessions run code in kernels, so an authorizer's rules for kernels govern them too:
#: a deployment that forbids kernel execution is not opened up by this extension.
AUTH_RESOURCE = "kernels"

_SESSION_ID = r"(?P<session_id>[^/]+)"
_EXECUTION_ID = r"(?P<execution_id>[^/]+)"
NDJSON = "application/x-ndjson"
_CHUNK_SIZE = 1 << 20


class AgentSessionsAPIHandler(APIHandler):
    """Base handler: the manager and request-body validation."""

    auth_resource = AUTH_RESOURCE

    @property
    def agent_session_manager(self) -> AgentSessionManager:
        """The manager that owns the sessions."""
        manager: AgentSessionManager = self.settings["agent_session_manager"]
        return manager

    def validated_body(self, schema_name: str, *, required: bool = True) -> dict[str, Any]:
        """The request's JSON body checked against the spec's ``schema_name``, or a 400."""
        if not self.request.body.strip():
            if required:
                raise web.HTTPError(400, "The request needs a JSON body")
            return {}
        # Parsed here rather than by get_json_body, which answers 500 to bytes that are not
        # UTF-8 and logs every typo as a server error. A body that is there is validated
        # whatever it holds: a JSON ``null`` is not an object.
        try:
            body = json.loads(self.request.body)
        except (ValueError, RecursionError) as e:
            raise web.HTTPError(400, f"Invalid JSON in the request body: {e}") from e
        problem = validation_error(schema_name, body)
        if problem:
            raise web.HTTPError(400, f"Invalid request body: {problem}")
        return body

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """JSON errors as jupyter_server writes them; a 405 also says which methods exist."""
        if status_code == 405:
            # Not vars(type(self)): subclasses (Kernel Gateway's wrappers) inherit the methods.
            allowed = [
                m.upper()
                for m in ("get", "post", "put", "delete")
                if getattr(type(self), m) is not getattr(web.RequestHandler, m)
            ]
            self.set_header("Allow", ", ".join(allowed))
        super().write_error(status_code, **kwargs)

    async def send_file(self, handle: BinaryIO, mime_type: str, size: int) -> None:
        """Send an open file of the kernel's making and close it; in chunks, as files can be
        hundreds of megabytes."""
        with handle:
            self.set_header("Content-Type", mime_type)
            # HTML and SVG the kernel made: never let a browser run them in the server's
            # origin, where they could act with the user's credentials.
            self.set_header("Content-Security-Policy", "sandbox; default-src 'none'")
            self.set_header("X-Content-Type-Options", "nosniff")
            self.set_header("Content-Length", str(size))
            # No more than announced: the kernel may be appending to the file meanwhile.
            remaining = size
            while remaining > 0 and (chunk := handle.read(min(_CHUNK_SIZE, remaining))):
                remaining -= len(chunk)
                self.write(chunk)
                await self.flush()
        self.finish()

    def finish_json(self, model: Any, status: int = 200) -> None:
        """Answer with ``model`` as JSON."""
        self.set_status(status)
        self.finish(json.dumps(model))


class SessionsHandler(AgentSessionsAPIHandler):
    """``/api/agent-sessions``: list and create sessions."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """List the live sessions."""
        self.finish_json(self.agent_session_manager.list_sessions())

    @web.authenticated
    @authorized(action="execute")
    async def post(self) -> None:
        """Start a session and answer 201 with its model and Location."""
        body = self.validated_body("CreateSessionRequest", required=False)
        model = await self.agent_session_manager.create_session(
            kernel_name=body.get("kernel_name"), name=body.get("name"), env=body.get("env")
        )
        self.set_header(
            "Location", url_path_join(self.base_url, "api/agent-sessions", model["id"])
        )
        self.finish_json(model, status=201)


class SessionHandler(AgentSessionsAPIHandler):
    """``/api/agent-sessions/{id}``: get and delete one session."""

    @web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        """Get a session's model."""
        self.finish_json(self.agent_session_manager.get_session(session_id))

    @web.authenticated
    @authorized
    async def delete(self, session_id: str) -> None:
        """Delete a session; its kernel is shut down."""
        await self.agent_session_manager.delete_session(session_id)
        self.set_status(204)
        self.finish()


class EventStreamHandler(AgentSessionsAPIHandler):
    """Base of the handlers that answer with an execution's events, one JSON object a line."""

    _gone = False

    async def stream_events(self, execution: Execution, after: int) -> None:
        """Send the events after ``after`` (kept ones, then live ones), then ``done``.

        Each line is flushed as it comes; a heartbeat line goes out after
        ``heartbeat_interval`` seconds without one, so proxies keep the connection.
        """
        interval = self.agent_session_manager.executions.heartbeat_interval
        self.set_header("Content-Type", NDJSON)
        self.set_header("Cache-Control", "no-cache")
        # Proxies that buffer answers (nginx) would hold the lines back until the end.
        self.set_header("X-Accel-Buffering", "no")
        # Lines are small and must leave at once, not wait for the ACK of the one before.
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)
        reader = execution.log.open_reader(after)
        try:
            while not self._gone:
                events = execution.events_after(reader.seq)
                if events:
                    self.write("".join(json.dumps(event) + "\n" for event in events))
                    await self.flush()
                    execution.log.advance(reader, events[-1]["seq"])
                elif execution.done:
                    self.write(json.dumps({"type": "done", "result": execution.result}) + "\n")
                    break
                elif not await execution.changed(interval):
                    self.write('{"type": "heartbeat"}\n')
                    await self.flush()
        except StreamClosedError:
            return
        finally:
            execution.log.close_reader(reader)
        if not self._gone:
            self.finish(set_content_type=NDJSON)

    def on_connection_close(self) -> None:
        """Stop sending to a client that went away."""
        self._gone = True


class ExecuteHandler(EventStreamHandler):
    """``/api/agent-sessions/{id}/execute``: run code.

    A blocking or streamed call belongs to its request: when the client disconnects, a call
    still waiting for its turn never runs, and a running one is interrupted, so the session
    is free for the next call. A background call belongs to nobody: it runs to its end.
    """

    _execution: asyncio.Future[Any] | None = None

    @web.authenticated
    @authorized(action="execute")
    async def post(self, session_id: str) -> None:
        """Run the body's code: answer with its result, its events, or its execution."""
        body = self.validated_body("ExecuteRequest")
        stream, background = body.get("stream", False), body.get("background", False)
        if stream and background:
            raise web.HTTPError(
                400, "stream and background cannot both be true: follow a background "
                "execution with GET .../executions/{execution_id}/events"
            )
        if stream or background:
            execution = self.agent_session_manager.start_execution(
                session_id, body["code"], timeout=body.get("timeout"), background=background
            )
            if background:
                self.set_header("Location", _execution_url(self.base_url, execution))
                self.finish_json(execution.model(), status=202)
                return
            self._execution = execution.task
            await self.stream_events(execution, after=0)
            return
        self._execution = asyncio.ensure_future(
            self.agent_session_manager.execute(
                session_id, body["code"], timeout=body.get("timeout")
            )
        )
        try:
            result = await self._execution
        except asyncio.CancelledError:
            self.log.info("Agent session %s: client went away, call abandoned", session_id)
            return
        self.finish_json(result)

    def on_connection_close(self) -> None:
        """Abandon the call of a client that went away."""
        super().on_connection_close()
        if self._execution is not None and not self._execution.done():
            self._execution.cancel()


class InterruptHandler(AgentSessionsAPIHandler):
    """``/api/agent-sessions/{id}/interrupt``."""

    @web.authenticated
    @authorized(action="execute")
    async def post(self, session_id: str) -> None:
        """Interrupt the session's kernel."""
        await self.agent_session_manager.interrupt(session_id)
        self.set_status(204)
        self.finish()


class RestartHandler(AgentSessionsAPIHandler):
    """``/api/agent-sessions/{id}/restart``."""

    @web.authenticated
    @authorized(action="execute")
    async def post(self, session_id: str) -> None:
        """Give the session a fresh kernel and answer with its model."""
        self.finish_json(await self.agent_session_manager.restart(session_id))


class FileHandler(AgentSessionsAPIHandler):
    """``/api/agent-sessions/{id}/files/{file_id}``: download a captured output."""

    @web.authenticated
    @authorized
    async def get(self, session_id: str, file_id: str) -> None:
        """Send the file's bytes with its media type; ``?max_size=N`` downscales an image to
        N pixels on its long edge (and about 750 KB), for models."""
        edge = None
        if self.get_query_argument("max_size", None) is not None:
            edge = int(_number_argument(self, "max_size", integer=True))
            if not 16 <= edge <= 10_000:
                raise web.HTTPError(400, "max_size must be a number of pixels from 16 to 10000")
        stored = self.agent_session_manager.get_file(session_id, file_id)
        try:
            # Opened through the store: the kernel may have swapped the file since get_file.
            handle = stored.open()
        except StoredFileChangedError as e:
            raise web.HTTPError(404, f"File not found in agent session {session_id}") from e
        if edge is None or not stored.mime_type.startswith("image/"):
            await self.send_file(handle, stored.mime_type, stored.size)
            return
        try:
            with handle:
                # Decoding a large image takes a while: off the server's loop.
                data, mime_type = await asyncio.to_thread(
                    images.downscale, handle, stored.mime_type, edge
                )
        except images.ImagesUnavailableError as e:
            raise web.HTTPError(501, str(e)) from e
        except images.NotAnImageError as e:
            raise web.HTTPError(415, f"File {file_id}: {e}") from e
        await self.send_file(io.BytesIO(data), mime_type, len(data))


class WorkspaceRootHandler(AgentSessionsAPIHandler):
    """``/api/agent-sessions/{id}/workspace``: the listing of the session's working folder."""

    @web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        """List the working folder."""
        self.finish_json(self.agent_session_manager.read_workspace(session_id, ""))


@web.stream_request_body
class WorkspaceHandler(AgentSessionsAPIHandler):
    """``/api/agent-sessions/{id}/workspace/{path}``: a file or folder of the working folder.

    An upload's body is streamed to disk as it arrives (never held in memory), so the
    checks that come before a body, authentication and the authorizer's, run in
    :meth:`prepare` for PUT, before the first byte is read.
    """

    _upload: Upload | None = None

    async def prepare(self) -> None:  # type: ignore[override]
        """Authenticate (and for PUT, authorize and open the upload) before the body."""
        await super().prepare()
        if self.request.method != "PUT" or self._finished:
            return
        await self._authorize_upload()  # type: ignore[misc]
        # The size limit is ours (max_upload_bytes, a clear 413), not the server's: a body
        # past it is read and dropped rather than cut off with a bare 400.
        assert isinstance(self.request.connection, HTTP1Connection)
        self.request.connection.set_max_body_size(1 << 62)
        declared = self.request.headers.get("Content-Length")
        self._upload = self.agent_session_manager.start_upload(
            self.path_kwargs["session_id"],
            self.path_kwargs["path"],
            int(declared) if declared and declared.isdigit() else None,
        )

    @web.authenticated
    @authorized  # a PUT: the authorizer is asked for "write", as for put()
    async def _authorize_upload(self) -> None:
        """Nothing: the decorators make put()'s checks before its body is read."""

    def data_received(self, chunk: bytes) -> None:
        """Write a piece of an upload; bodies of other requests are ignored."""
        if self._upload is not None:
            self._upload.write(chunk)

    @web.authenticated
    @authorized
    async def get(self, session_id: str, path: str) -> None:
        """A file's bytes with its media type, or a folder's listing."""
        found = self.agent_session_manager.read_workspace(session_id, path)
        if not isinstance(found, OpenedFile):
            self.finish_json(found)
            return
        # A browser saves the file instead of showing it; a client tells it from a listing.
        name = path.rstrip("/").rsplit("/", 1)[-1]
        self.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(name)}")
        await self.send_file(found.handle, found.mime_type, found.size)

    @web.authenticated
    @authorized
    async def put(self, session_id: str, path: str) -> None:
        """Put the uploaded file in place: 201 when it is new, 200 when it replaced one."""
        assert self._upload is not None
        upload, self._upload = self._upload, None
        created, model = self.agent_session_manager.finish_upload(upload)
        if created:
            self.set_header(
                "Location",
                url_path_join(
                    self.base_url,
                    "api/agent-sessions",
                    quote(session_id, safe=""),
                    "workspace",
                    quote(model["path"], safe="/"),
                ),
            )
        self.finish_json(model, status=201 if created else 200)

    @web.authenticated
    @authorized
    async def delete(self, session_id: str, path: str) -> None:
        """Delete a file, or a folder and everything in it."""
        self.agent_session_manager.delete_workspace_path(session_id, path)
        self.set_status(204)
        self.finish()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as JSON; a refused upload also closes the connection.

        Its body may be unread (refused before it came): tornado drops the rest and closes
        the connection, and the header tells the client not to reuse it.
        """
        if self.request.method == "PUT":
            self.set_header("Connection", "close")
        super().write_error(status_code, **kwargs)

    def on_finish(self) -> None:
        """Leave nothing of an upload that did not complete."""
        if self._upload is not None:
            self._upload.discard()
            self._upload = None

    def on_connection_close(self) -> None:
        """An upload broken off leaves no file."""
        self.on_finish()


# -- background executions ----------------------------------------------------------------


def _execution_url(base_url: str, execution: Execution) -> str:
    return url_path_join(
        base_url, "api/agent-sessions", execution.session_id, "executions", execution.id
    )


def _number_argument(handler: web.RequestHandler, name: str, *, integer: bool) -> float:
    """A query argument that must be a number of 0 or more (0 when it is left out)."""
    raw = handler.get_query_argument(name, None)
    if raw is None:
        return 0
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if not (math.isfinite(value) and value >= 0):
        kind = "a whole number" if integer else "a number of seconds"
        raise web.HTTPError(400, f"{name} must be {kind}, 0 or more, not {raw!r}")
    return value


class ExecutionsHandler(AgentSessionsAPIHandler):
    """``/api/agent-sessions/{id}/executions``: the session's recent background executions."""

    @web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        """List the kept background executions, oldest first (without their results)."""
        self.finish_json(self.agent_session_manager.list_executions(session_id))


class ExecutionHandler(AgentSessionsAPIHandler):
    """``/api/agent-sessions/{id}/executions/{execution_id}``: one background execution."""

    @web.authenticated
    @authorized
    async def get(self, session_id: str, execution_id: str) -> None:
        """The execution's model, with its result once it ended; ``?wait=S`` long-polls."""
        wait = _number_argument(self, "wait", integer=False)
        manager = self.agent_session_manager
        execution = manager.get_execution(session_id, execution_id)
        if wait:
            await execution.wait(min(wait, manager.executions.max_wait))
        self.finish_json(execution.model())


class ExecutionEventsHandler(EventStreamHandler):
    """``/api/agent-sessions/{id}/executions/{execution_id}/events``: follow an execution."""

    @web.authenticated
    @authorized
    async def get(self, session_id: str, execution_id: str) -> None:
        """The events after ``?after=N`` (kept, then live), then ``done``; the run goes on
        whatever happens to this connection."""
        after = int(_number_argument(self, "after", integer=True))
        execution = self.agent_session_manager.get_execution(session_id, execution_id)
        await self.stream_events(execution, after=after)


class ExecutionInterruptHandler(AgentSessionsAPIHandler):
    """``/api/agent-sessions/{id}/executions/{execution_id}/interrupt``."""

    @web.authenticated
    @authorized(action="execute")
    async def post(self, session_id: str, execution_id: str) -> None:
        """Stop the execution: a queued one never runs, a running one is interrupted."""
        await self.agent_session_manager.interrupt_execution(session_id, execution_id)
        self.set_status(204)
        self.finish()


default_handlers: list[tuple[str, type[AgentSessionsAPIHandler]]] = [
    (r"/api/agent-sessions/?", SessionsHandler),
    (rf"/api/agent-sessions/{_SESSION_ID}/?", SessionHandler),
    (rf"/api/agent-sessions/{_SESSION_ID}/execute", ExecuteHandler),
    (rf"/api/agent-sessions/{_SESSION_ID}/interrupt", InterruptHandler),
    (rf"/api/agent-sessions/{_SESSION_ID}/restart", RestartHandler),
    (rf"/api/agent-sessions/{_SESSION_ID}/files/(?P<file_id>[^/]+)", FileHandler),
    (rf"/api/agent-sessions/{_SESSION_ID}/workspace/?", WorkspaceRootHandler),
    (rf"/api/agent-sessions/{_SESSION_ID}/workspace/(?P<path>.+)", WorkspaceHandler),
    (rf"/api/agent-sessions/{_SESSION_ID}/executions/?", ExecutionsHandler),
    (rf"/api/agent-sessions/{_SESSION_ID}/executions/{_EXECUTION_ID}/?", ExecutionHandler),
    (
        rf"/api/agent-sessions/{_SESSION_ID}/executions/{_EXECUTION_ID}/events",
        ExecutionEventsHandler,
    ),
    (
        rf"/api/agent-sessions/{_SESSION_ID}/executions/{_EXECUTION_ID}/interrupt",
        ExecutionInterruptHandler,
    ),
]
