"""The MCP tools of agent sessions, one definition for both transports.

A :class:`ToolBackend` does the work (over REST for ``jupyter-exec mcp``, through the session
manager inside the server); :func:`build_mcp_server` turns one into the official SDK's
low-level ``Server``: the tool list with its schemas and annotations, argument checks, the
text a model reads, images inline or as links, progress while ``execute`` runs. This module
needs the ``mcp`` package (the ``[mcp]`` extra) and never imports the server package.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import jsonschema
import jsonschema.exceptions
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from ._version import __version__

#: Images put inline in one ``execute`` result; the rest are links.
MAX_INLINE_IMAGES = 3
#: The long edge, in pixels, images are downscaled to for a model (Claude's own limit).
MAX_IMAGE_EDGE = 1568
#: Bytes an image may have once downscaled (the server re-encodes it smaller past that).
MAX_IMAGE_BYTES = 750_000
#: Bytes of all the inline images of one result together: base64 makes them a third
#: larger, and clients refuse a result (Claude Desktop) or a message (the SDK's SSE reader)
#: over 1 MiB. Images past it are links.
MAX_INLINE_BYTES = 700_000
#: Seconds between progress notifications while a call prints nothing (clients give up on a
#: request they hear nothing of for a while).
HEARTBEAT_SECONDS = 5.0
#: Characters of printed output one progress notification carries at most.
MAX_PROGRESS_CHARS = 4_000
#: Characters of output all progress notifications of a call carry; past it only the
#: heartbeat goes on (the result has the output, cut as the server cuts it).
MAX_PROGRESS_TOTAL_CHARS = 100_000
#: Characters of a workspace file ``read_file`` returns; the rest is cut with a note.
MAX_READ_CHARS = 100_000
#: Seconds a call may run when the model gives no timeout.
DEFAULT_TIMEOUT = 300.0

FILE_URI = re.compile(r"^jupyter-exec://sessions/(?P<session_id>[^/]+)/files/(?P<file_id>[^/]+)$")

#: An event of a streamed call (``{"type": "stream", "text": ...}``, ...), sent as it comes.
EventCallback = Callable[[dict[str, Any]], Awaitable[None]]


class ToolError(Exception):
    """A failure the model should read (a tool result with ``isError``), not a crash."""


class ToolBackend(Protocol):
    """What the tools need from a server; raises :class:`ToolError` for what went wrong."""

    async def create_session(
        self, name: str | None, kernel_name: str | None, env: dict[str, str] | None
    ) -> dict[str, Any]:
        """Start a session; its model."""

    async def list_sessions(self) -> list[dict[str, Any]]:
        """The live sessions' models."""

    async def close_session(self, session_id: str) -> None:
        """Delete a session and its kernel."""

    async def execute(
        self, session_id: str, code: str, timeout: float, on_event: EventCallback | None
    ) -> dict[str, Any]:
        """Run code; the execution result (``on_event`` hears its events as they come)."""

    async def interrupt(self, session_id: str) -> None:
        """Interrupt what the session runs."""

    async def restart(self, session_id: str) -> dict[str, Any]:
        """A fresh kernel for the session; its model."""

    async def list_files(self, session_id: str, path: str) -> dict[str, Any]:
        """A folder's listing of the session's working folder."""

    async def read_file(self, session_id: str, path: str, max_bytes: int) -> tuple[bytes, int]:
        """At most ``max_bytes`` of a workspace file, and its whole size."""

    async def write_file(self, session_id: str, path: str, data: bytes) -> dict[str, Any]:
        """Write a workspace file; its entry."""

    async def get_image(
        self, session_id: str, file_id: str, max_size: int | None
    ) -> tuple[bytes, str]:
        """A captured file's bytes and type; an image downscaled to ``max_size`` px."""


_SESSION_ID = {
    "type": "string",
    "description": "The id create_session returned (list_sessions shows the live ones).",
}


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def tool_definitions(*, implicit_session: bool) -> list[types.Tool]:
    """The tools; with ``implicit_session`` (stdio), ``session_id`` may be left out and
    means the server's default session, made on first use."""
    session_required = [] if implicit_session else ["session_id"]
    session_id = dict(_SESSION_ID)
    if implicit_session:
        session_id["description"] += " Leave it out for the default session."

    def tool(
        name: str,
        description: str,
        properties: dict[str, Any],
        required: list[str],
        *,
        read_only: bool = False,
        destructive: bool = False,
        idempotent: bool = False,
    ) -> types.Tool:
        return types.Tool(
            name=name,
            description=description,
            input_schema=_schema(properties, required),
            annotations=types.ToolAnnotations(
                read_only_hint=read_only,
                destructive_hint=destructive,
                idempotent_hint=idempotent,
                open_world_hint=False,
            ),
        )

    return [
        tool(
            "create_session",
            "Start a new Jupyter session: a kernel of its own whose variables, imports and "
            "working folder live on across execute calls. Returns its session_id.",
            {
                "name": {
                    "type": "string",
                    "description": "A name to recognise the session by (letters, digits, '-', "
                    "'_', '.'); also the name of its working folder.",
                },
                "kernel_name": {
                    "type": "string",
                    "description": "The Jupyter kernel to run (default: python3).",
                },
                "env": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Environment variables for the kernel, name to value.",
                },
            },
            [],
        ),
        tool(
            "list_sessions",
            "List the live sessions: id, name, kernel, status, number of calls.",
            {},
            [],
            read_only=True,
            idempotent=True,
        ),
        tool(
            "close_session",
            "Shut a session's kernel down: its variables are lost, its files stay.",
            {"session_id": {**_SESSION_ID}},
            ["session_id"],
            destructive=True,
            idempotent=True,
        ),
        tool(
            "execute",
            "Run Python code in a session's kernel, as a notebook cell: state persists "
            "between calls, the last expression's value is shown, plots come back as images. "
            "Returns the output (printed text, results, the traceback of an error), the "
            "files written to the working folder, and the images.",
            {
                "code": {"type": "string", "description": "The code to run."},
                "session_id": session_id,
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "Seconds the code may run before it is interrupted "
                    "(variables set before survive); default 300.",
                },
            },
            ["code", *session_required],
        ),
        tool(
            "interrupt",
            "Interrupt the code a session is running (as Ctrl-C); its state stays.",
            {"session_id": session_id},
            session_required,
            idempotent=True,
        ),
        tool(
            "restart",
            "Restart a session's kernel: every variable and import is lost, files stay.",
            {"session_id": session_id},
            session_required,
            destructive=True,
        ),
        tool(
            "list_files",
            "List a folder of the session's working folder (where its code runs).",
            {
                "session_id": session_id,
                "path": {
                    "type": "string",
                    "description": "A folder relative to the working folder (default: itself).",
                },
            },
            session_required,
            read_only=True,
            idempotent=True,
        ),
        tool(
            "read_file",
            f"Read a text file of the session's working folder (at most {MAX_READ_CHARS} "
            "characters; a binary file is described, an image shown).",
            {
                "session_id": session_id,
                "path": {"type": "string", "description": "Relative to the working folder."},
            },
            ["path", *session_required],
            read_only=True,
            idempotent=True,
        ),
        tool(
            "write_file",
            "Write a file into the session's working folder (replacing one of that path).",
            {
                "session_id": session_id,
                "path": {"type": "string", "description": "Relative to the working folder."},
                "content": {"type": "string", "description": "The file's content."},
                "encoding": {
                    "type": "string",
                    "enum": ["utf-8", "base64"],
                    "description": "How content is given: text (utf-8, the default) or base64 "
                    "for binary data.",
                },
            },
            ["path", "content", *session_required],
            destructive=True,
            idempotent=True,
        ),
        tool(
            "get_image",
            "Get an image an execute call produced (its file id is in the output, as "
            "[image/png: <file id>]), downscaled to max_size pixels on its long edge.",
            {
                "session_id": session_id,
                "file_id": {"type": "string", "description": "The file id from the output."},
                "max_size": {
                    "type": "integer",
                    "minimum": 16,
                    "maximum": MAX_IMAGE_EDGE,
                    "description": f"The long edge in pixels (default and at most "
                    f"{MAX_IMAGE_EDGE}).",
                },
            },
            ["file_id", *session_required],
            read_only=True,
            idempotent=True,
        ),
    ]


def file_uri(session_id: str, file_id: str) -> str:
    """The resource URI of a captured file, readable with ``resources/read``."""
    return f"jupyter-exec://sessions/{session_id}/files/{file_id}"


def result_text(result: dict[str, Any]) -> str:
    """An execution result as text a model reads well: the status, the output, the files."""
    status = result.get("status", "?")
    lines = [f"status: {status} (execution {result.get('execution_count')})"]
    output = str(result.get("output") or "")
    if output:
        lines.append(output.rstrip("\n"))
    if result.get("truncated"):
        lines.append("(the output was cut: the marker above says where the whole text is)")
    files = result.get("files") or []
    if files:
        lines.append("files: " + ", ".join(f"{f['mime_type']} {f['id']}" for f in files))
    changes = result.get("workspace_changes") or []
    if changes:
        lines.append(
            "working folder: " + ", ".join(f"{c.get('change')} {c.get('path')}" for c in changes)
        )
    return "\n".join(lines)


class McpTools:
    """The tools' behaviour over one backend; the SDK's handlers call :meth:`call`."""

    def __init__(self, backend: ToolBackend, *, implicit_session: bool) -> None:
        """Serve ``backend``; ``implicit_session`` makes a default session when none is named."""
        self.backend = backend
        self.implicit_session = implicit_session
        self.tools = tool_definitions(implicit_session=implicit_session)
        self._schemas = {tool.name: tool.input_schema for tool in self.tools}
        # Built once: jsonschema.validate checks the schema itself on every call.
        self._validators = {
            name: jsonschema.Draft202012Validator(schema) for name, schema in self._schemas.items()
        }
        self.default_session_id: str | None = None
        self._default_lock = asyncio.Lock()

    async def call(
        self, name: str, arguments: dict[str, Any], progress: ProgressReporter
    ) -> types.CallToolResult:
        """Run one tool; a failure is a result with ``isError`` and the reason."""
        schema = self._schemas.get(name)
        if schema is None:
            return _error(f"Unknown tool {name!r}: the tools are {', '.join(self._schemas)}.")
        if "session_id" not in arguments and "session_id" in schema["required"]:
            return _error(
                f"{name} needs a session_id: call create_session first and pass the "
                "session_id it returns (list_sessions shows the live ones)."
            )
        error = jsonschema.exceptions.best_match(self._validators[name].iter_errors(arguments))
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path) or "arguments"
            return _error(f"Invalid arguments for {name}: {where}: {error.message}")
        try:
            return await getattr(self, f"_{name}")(progress=progress, **arguments)
        except ToolError as e:
            return _error(str(e))

    async def _session(self, session_id: str | None) -> str:
        if session_id is not None:
            return session_id
        if not self.implicit_session:
            raise ToolError("No session_id: call create_session first and pass its session_id.")
        async with self._default_lock:
            if self.default_session_id is None:
                model = await self.backend.create_session(None, None, None)
                self.default_session_id = str(model["id"])
        return self.default_session_id

    async def _create_session(
        self,
        progress: ProgressReporter,
        name: str | None = None,
        kernel_name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> types.CallToolResult:
        model = await self.backend.create_session(name, kernel_name, env)
        return _text(
            f"session_id: {model['id']}\nname: {model.get('name')}\n"
            f"kernel: {model.get('kernel_name')}",
        )

    async def _list_sessions(self, progress: ProgressReporter) -> types.CallToolResult:
        models = await self.backend.list_sessions()
        if not models:
            return _text("No live sessions.")
        lines = [
            f"{m['id']}  name={m.get('name')}  kernel={m.get('kernel_name')}  "
            f"status={m.get('status')}  calls={m.get('execution_count')}"
            + ("  (default)" if m["id"] == self.default_session_id else "")
            for m in models
        ]
        return _text("\n".join(lines))

    async def _close_session(
        self, progress: ProgressReporter, session_id: str
    ) -> types.CallToolResult:
        await self.backend.close_session(session_id)
        if session_id == self.default_session_id:
            self.default_session_id = None
        return _text(f"Session {session_id} closed.")

    async def _execute(
        self,
        progress: ProgressReporter,
        code: str,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> types.CallToolResult:
        session_id = await self._session(session_id)
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        if progress.wanted:
            async with progress.heartbeat():
                result = await self.backend.execute(session_id, code, timeout, progress.event)
        else:
            result = await self.backend.execute(session_id, code, timeout, None)
        content: list[types.ContentBlock] = [types.TextContent(text=result_text(result))]
        images = [f for f in result.get("files") or [] if f["mime_type"].startswith("image/")]
        inline, budget = 0, MAX_INLINE_BYTES
        for file in images:
            uri = file_uri(session_id, file["id"])
            if inline < MAX_INLINE_IMAGES:
                with contextlib.suppress(ToolError):
                    data, mime_type = await self.backend.get_image(
                        session_id, file["id"], MAX_IMAGE_EDGE
                    )
                    if len(data) <= budget:
                        content.append(_image(data, mime_type))
                        inline, budget = inline + 1, budget - len(data)
                        continue
            content.append(
                types.ResourceLink(
                    uri=uri,
                    name=file["id"],
                    mime_type=file["mime_type"],
                    size=file.get("size"),
                    description="An image of this call (get_image or resources/read).",
                )
            )
        for file in result.get("files") or []:
            if not file["mime_type"].startswith("image/"):
                content.append(
                    types.ResourceLink(
                        uri=file_uri(session_id, file["id"]),
                        name=file["id"],
                        mime_type=file["mime_type"],
                        size=file.get("size"),
                    )
                )
        return types.CallToolResult(content=content, is_error=result.get("status") != "ok")

    async def _interrupt(
        self, progress: ProgressReporter, session_id: str | None = None
    ) -> types.CallToolResult:
        session_id = await self._session(session_id)
        await self.backend.interrupt(session_id)
        return _text(f"Session {session_id} interrupted.")

    async def _restart(
        self, progress: ProgressReporter, session_id: str | None = None
    ) -> types.CallToolResult:
        session_id = await self._session(session_id)
        await self.backend.restart(session_id)
        return _text(f"Session {session_id} has a fresh kernel: its variables are gone.")

    async def _list_files(
        self, progress: ProgressReporter, session_id: str | None = None, path: str = ""
    ) -> types.CallToolResult:
        session_id = await self._session(session_id)
        listing = await self.backend.list_files(session_id, path)
        entries = listing.get("entries", [])
        lines = [
            f"{e['path']}{'/' if e.get('type') == 'directory' else ''}"
            + (f"  {e.get('size')} bytes" if e.get("type") == "file" else "")
            for e in entries
        ]
        if listing.get("truncated"):
            lines.append("(the listing was cut)")
        return _text("\n".join(lines) or f"{path or 'The working folder'} is empty.")

    async def _read_file(
        self, progress: ProgressReporter, path: str, session_id: str | None = None
    ) -> types.CallToolResult:
        session_id = await self._session(session_id)
        # Four bytes a character at most: enough for MAX_READ_CHARS of any UTF-8 text.
        data, size = await self.backend.read_file(session_id, path, 4 * MAX_READ_CHARS)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(data) - 3:  # not a character cut at the end
                return _text(
                    f"{path} is a binary file of {size} bytes (not UTF-8 text); an image "
                    "output is read with get_image, data through execute."
                )
            text = data[: e.start].decode("utf-8")
        if len(text) > MAX_READ_CHARS or len(data) < size:
            text = text[:MAX_READ_CHARS]
            text += f"\n[... cut: the file has {size} bytes; read the rest with execute]"
        return _text(text)

    async def _write_file(
        self,
        progress: ProgressReporter,
        path: str,
        content: str,
        session_id: str | None = None,
        encoding: str = "utf-8",
    ) -> types.CallToolResult:
        session_id = await self._session(session_id)
        if encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except ValueError as e:
                raise ToolError(f"content is not valid base64: {e}") from e
        else:
            data = content.encode("utf-8", "surrogatepass")
        entry = await self.backend.write_file(session_id, path, data)
        return _text(f"Wrote {entry.get('path', path)} ({len(data)} bytes).")

    async def _get_image(
        self,
        progress: ProgressReporter,
        file_id: str,
        session_id: str | None = None,
        max_size: int = MAX_IMAGE_EDGE,
    ) -> types.CallToolResult:
        session_id = await self._session(session_id)
        data, mime_type = await self.backend.get_image(session_id, file_id, max_size)
        if not mime_type.startswith("image/"):
            raise ToolError(f"File {file_id} is {mime_type}, not an image.")
        if len(data) > MAX_IMAGE_BYTES:
            raise ToolError(f"Image {file_id} is {len(data)} bytes even downscaled: too large.")
        return types.CallToolResult(content=[_image(data, mime_type)])

    async def read_resource(self, uri: str) -> types.ReadResourceResult:
        """The bytes of a captured file named by :func:`file_uri` (an image downscaled)."""
        match = FILE_URI.match(uri)
        if match is None:
            raise ToolError(f"Unknown resource {uri!r}: expected {file_uri('SESSION', 'FILE')}")
        data, mime_type = await self.backend.get_image(
            match["session_id"], match["file_id"], MAX_IMAGE_EDGE
        )
        return types.ReadResourceResult(
            contents=[
                types.BlobResourceContents(
                    uri=uri, mime_type=mime_type, blob=base64.b64encode(data).decode("ascii")
                )
            ]
        )


class ProgressReporter:
    """Progress notifications of one call: its output as printed, and a heartbeat."""

    def __init__(self, report: Callable[[float, str], Awaitable[None]] | None) -> None:
        """Send through ``report(progress, message)``; None when the client wants none."""
        self._report = report
        self._count = 0
        self._chars = 0
        self._started = time.monotonic()
        self._last = self._started

    @property
    def wanted(self) -> bool:
        """Whether the client sent a progress token."""
        return self._report is not None

    async def send(self, message: str) -> None:
        """One notification (its progress number grows with each)."""
        if self._report is None:
            return
        self._count += 1
        self._last = time.monotonic()
        await self._report(self._count, message)

    async def event(self, event: dict[str, Any]) -> None:
        """Pass an execution event on: printed text as is, other outputs named; bounded, so
        a cell printing megabytes does not send them all twice (here and in the result)."""
        kind = event.get("type")
        if kind == "stream":
            text = str(event.get("text", ""))
        elif kind in ("result", "display", "error", "note"):
            text = str(event.get("text") or event.get("evalue") or f"[{kind}]")
        else:
            return
        if self._chars >= MAX_PROGRESS_TOTAL_CHARS:
            return
        if len(text) > MAX_PROGRESS_CHARS:
            text = text[:MAX_PROGRESS_CHARS] + f"[... {len(text) - MAX_PROGRESS_CHARS} more]"
        self._chars += len(text)
        if self._chars >= MAX_PROGRESS_TOTAL_CHARS:
            text += "\n[... more output in the result]"
        await self.send(text)

    @contextlib.asynccontextmanager
    async def heartbeat(self) -> Any:
        """While in the block, a notification whenever none went out for a while."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_SECONDS - (time.monotonic() - self._last))
                if time.monotonic() - self._last >= HEARTBEAT_SECONDS - 0.05:
                    elapsed = time.monotonic() - self._started
                    await self.send(f"running for {elapsed:.0f} s")

        task = asyncio.ensure_future(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def build_mcp_server(tools: McpTools, *, instructions: str | None = None) -> Server[Any]:
    """The SDK's low-level server answering with ``tools``."""

    async def list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools.tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        wanted = bool(ctx.meta and ctx.meta.get("progress_token") is not None)

        async def report(progress: float, message: str) -> None:
            await ctx.session.report_progress(progress, None, message)

        reporter = ProgressReporter(report if wanted else None)
        return await tools.call(params.name, dict(params.arguments or {}), reporter)

    async def list_resources(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        # Files are linked from results, not listed: a session may hold thousands.
        return types.ListResourcesResult(resources=[])

    async def read_resource(
        ctx: Any, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        try:
            return await tools.read_resource(params.uri)
        except ToolError as e:
            raise MCPError(code=types.INVALID_PARAMS, message=str(e)) from e

    return Server(
        "jupyter-exec",
        version=__version__,
        instructions=instructions
        or "Stateful Jupyter sessions: run code with execute; variables persist between "
        "calls of one session.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)])


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _image(data: bytes, mime_type: str) -> types.ImageContent:
    return types.ImageContent(data=base64.b64encode(data).decode("ascii"), mime_type=mime_type)
