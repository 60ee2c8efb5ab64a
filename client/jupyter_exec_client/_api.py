"""The agent-session REST API without I/O: what to send, and what the answers mean.

Every API call is a *flow*: a generator that yields the :class:`Request` to send, is sent
back the :class:`Response`, and returns the decoded answer or raises an error of
:mod:`jupyter_exec_client.errors`. A transport (see :mod:`jupyter_exec_client._transport`)
drives flows, with blocking I/O for the sync executor and from a thread for the async one,
so the protocol lives here once for both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeAlias, TypeVar
from urllib.parse import quote

from .connection import JupyterConnectionInfo
from .errors import (
    APIError,
    AuthenticationError,
    ExecutionNotFoundError,
    ExtensionMissingError,
    JupyterExecError,
    SessionNotFoundError,
    UnknownKernelError,
    WorkspaceFileNotFoundError,
    WorkspacePathError,
)

T = TypeVar("T")

#: Seconds to wait for an answer to a quick call (list, get, delete, interrupt).
DEFAULT_READ_TIMEOUT = 30.0
#: Seconds to wait for a call that may start a kernel (the server gives one 60 s by default).
KERNEL_START_READ_TIMEOUT = 120.0
#: Extra seconds an execute call waits beyond its own timeout: the server interrupts the
#: kernel when the timeout passes and answers with the output so far, so it must be heard.
EXECUTE_READ_MARGIN = 30.0

#: Seconds to wait for the next line of a stream of events: the server sends a heartbeat
#: after 15 s without output (its heartbeat_interval), so silence this long means a drop.
EVENT_READ_TIMEOUT = 60.0

SESSIONS_PATH = "api/agent-sessions"
_UNKNOWN_KERNEL = re.compile(r"Unknown kernel_name .*?; available kernels: (?P<kernels>.*)$")


@dataclass(frozen=True)
class Request:
    """One HTTP request to the server.

    ``path`` is relative to the server's base URL, or starts with ``/`` when it already
    includes the base path (file URLs in execution results do). With ``save_to``, a 200
    answer's body is streamed into that file instead of being held in memory; with
    ``save_in``, into a new file of that folder named for the answer's media type; with
    ``upload_from``, the body is that file's bytes, streamed from disk. With ``stream``, a
    200 answer is left unread: the response's ``stream`` gives its lines.
    """

    method: str
    path: str
    body: dict[str, Any] | None = None
    read_timeout: float = DEFAULT_READ_TIMEOUT
    save_to: Path | None = None
    save_in: Path | None = None
    upload_from: Path | None = None
    stream: bool = False


class LineStream(Protocol):
    """The body of an answer still arriving, read one line at a time (a transport's object)."""

    def readline(self, timeout: float) -> bytes:
        """The next line (with its newline); b"" at the end of the body."""

    def close(self) -> None:
        """Stop reading; the connection is closed unless the body was read whole."""


@dataclass(frozen=True)
class ReadLine:
    """Read the next line of ``stream``, waiting at most ``timeout`` seconds for it."""

    stream: LineStream
    timeout: float


@dataclass(frozen=True)
class CloseStream:
    """Close ``stream`` (the server sees the connection go)."""

    stream: LineStream


@dataclass(frozen=True)
class Response:
    """The server's answer: the status, the reason phrase and the body (empty when saved).

    ``location`` is where a redirect points (a proxy sending an unauthenticated request to
    its login page, for instance); ``disposition`` is the ``Content-Disposition`` header (a
    workspace file has one, a folder's listing has none).
    """

    status: int
    body: bytes = b""
    reason: str = ""
    location: str = ""
    disposition: str = ""
    #: The lines of a ``stream`` request's 200 answer.
    stream: LineStream | None = None
    #: Where a ``save_in`` request's answer was saved.
    saved_to: Path | None = None
    #: The ``Content-Type`` header of an answer held in memory.
    content_type: str = ""


#: A call in progress: yields requests (or line reads), is sent their answers, returns the
#: result.
Flow: TypeAlias = Generator[Request | ReadLine | CloseStream, Any, T]


class JupyterRestAPI:
    """What the REST APIs of a Jupyter server share: where they are, and how answers read."""

    def __init__(self, connection_info: JupyterConnectionInfo) -> None:
        """Build requests for the server of ``connection_info``."""
        self.connection_info = connection_info

    def _checked(self, request: Request, response: Response) -> Flow[Any]:
        """The decoded JSON of a successful answer (None when empty); errors raised."""
        if 300 <= response.status < 400:
            raise APIError(
                response.status,
                f"redirected to {response.location or 'another page'}: check the URL, its base "
                "path and the token",
                method=request.method,
                url=self.connection_info.url(request.path),
            )
        if response.status < 300:
            if not response.body:
                return None
            try:
                return json.loads(response.body)
            except ValueError:
                raise self._malformed(request, response.body[:200]) from None
        url = self.connection_info.url(request.path)
        message = _server_message(response)
        if response.status in (401, 403):
            raise AuthenticationError(response.status, message, method=request.method, url=url)
        if response.status == 404:
            yield from self._not_found(request, message)
        raise APIError(response.status, message, method=request.method, url=url)

    def _not_found(self, request: Request, message: str) -> Flow[None]:
        """Raise the error a 404 answer to ``request`` means; return for a plain APIError."""
        yield from ()

    def _workspace_answer(self, request: Request, response: Response | None = None) -> Flow[Any]:
        """Send a request about a file (unless answered); a refused path raises
        WorkspacePathError, other errors as :meth:`_checked` raises them."""
        if response is None:
            response = yield request
        if response.status in (400, 409):
            raise WorkspacePathError(
                response.status,
                _server_message(response),
                method=request.method,
                url=self.connection_info.url(request.path),
            )
        return (yield from self._checked(request, response))

    def _malformed(self, request: Request, answer: Any) -> APIError:
        return APIError(
            200,
            f"unexpected answer from the server: {answer!r:.200}",
            method=request.method,
            url=self.connection_info.url(request.path),
        )


class AgentSessionsAPI(JupyterRestAPI):
    """The calls of the agent-session API on one server, as flows."""

    def create_session(
        self, kernel_name: str, name: str | None = None, env: dict[str, str] | None = None
    ) -> Flow[dict[str, Any]]:
        """Start a session with a kernel of its own (``env`` in its environment); return its
        model."""
        body: dict[str, Any] = {"kernel_name": kernel_name}
        if name is not None:
            body["name"] = name
        if env:
            body["env"] = env
        request = Request("POST", SESSIONS_PATH, body, read_timeout=KERNEL_START_READ_TIMEOUT)
        response = yield request
        if response.status == 400:
            match = _UNKNOWN_KERNEL.match(_server_message(response))
            if match:
                raise UnknownKernelError(
                    kernel_name,
                    [k.strip() for k in match["kernels"].split(",") if k.strip()],
                    method=request.method,
                    url=self.connection_info.url(request.path),
                )
        return _json_object((yield from self._checked(request, response)))

    def list_sessions(self) -> Flow[list[dict[str, Any]]]:
        """The models of the server's live sessions, oldest first."""
        request = Request("GET", SESSIONS_PATH)
        answer = yield from self._checked(request, (yield request))
        if not isinstance(answer, list):
            raise self._malformed(request, answer)
        return answer

    def get_session(self, session_id: str) -> Flow[dict[str, Any]]:
        """The model of one session."""
        request = Request("GET", _session_path(session_id))
        return _json_object((yield from self._checked(request, (yield request))))

    def delete_session(self, session_id: str) -> Flow[None]:
        """Delete a session: its kernel is shut down."""
        request = Request(
            "DELETE", _session_path(session_id), read_timeout=KERNEL_START_READ_TIMEOUT
        )
        yield from self._checked(request, (yield request))

    def execute(self, session_id: str, code: str, timeout: float) -> Flow[dict[str, Any]]:
        """Run ``code``; the server interrupts it after ``timeout`` seconds."""
        request = Request(
            "POST",
            _session_path(session_id, "execute"),
            {"code": code, "timeout": timeout},
            read_timeout=timeout + EXECUTE_READ_MARGIN,
        )
        return _json_object((yield from self._checked(request, (yield request))))

    def execute_streamed(self, session_id: str, code: str, timeout: float) -> Flow[LineStream]:
        """Run ``code`` with its events streamed; return the stream of event lines."""
        request = Request(
            "POST",
            _session_path(session_id, "execute"),
            {"code": code, "timeout": timeout, "stream": True},
            read_timeout=EVENT_READ_TIMEOUT,
            stream=True,
        )
        return (yield from self._opened_stream(request))

    def start_execution(self, session_id: str, code: str, timeout: float) -> Flow[dict[str, Any]]:
        """Queue ``code`` as a background execution; return its model."""
        request = Request(
            "POST",
            _session_path(session_id, "execute"),
            {"code": code, "timeout": timeout, "background": True},
        )
        return _json_object((yield from self._checked(request, (yield request))))

    def get_execution(
        self, session_id: str, execution_id: str, wait: float = 0
    ) -> Flow[dict[str, Any]]:
        """The model of a background execution; ``wait`` seconds for it to end first."""
        path = _session_path(session_id, "executions", quote(execution_id, safe=""))
        if wait:
            path += f"?wait={wait:g}"
        request = Request("GET", path, read_timeout=wait + DEFAULT_READ_TIMEOUT)
        return _json_object((yield from self._checked(request, (yield request))))

    def list_executions(self, session_id: str) -> Flow[list[dict[str, Any]]]:
        """The models of the session's kept background executions, oldest first."""
        request = Request("GET", _session_path(session_id, "executions"))
        answer = yield from self._checked(request, (yield request))
        if not isinstance(answer, list):
            raise self._malformed(request, answer)
        return answer

    def execution_events(
        self, session_id: str, execution_id: str, after: int = 0
    ) -> Flow[LineStream]:
        """The stream of a background execution's events after ``after``, then ``done``."""
        path = _session_path(session_id, "executions", quote(execution_id, safe=""), "events")
        request = Request(
            "GET", f"{path}?after={after}", read_timeout=EVENT_READ_TIMEOUT, stream=True
        )
        return (yield from self._opened_stream(request))

    def interrupt_execution(self, session_id: str, execution_id: str) -> Flow[None]:
        """Stop a background execution (a queued one never runs)."""
        path = _session_path(session_id, "executions", quote(execution_id, safe=""), "interrupt")
        request = Request("POST", path)
        yield from self._checked(request, (yield request))

    def read_event(self, stream: LineStream) -> Flow[dict[str, Any] | None]:
        """The next event of ``stream`` (heartbeats included); None at its end."""
        line = yield ReadLine(stream, EVENT_READ_TIMEOUT)
        if not line:
            return None
        try:
            event = json.loads(line)
        except ValueError:
            message = f"the server sent a line that is not JSON: {line[:200]!r}"
            raise APIError(200, message) from None
        return _json_object(event)

    def end_stream(self, stream: LineStream) -> Flow[None]:
        """Read what follows ``done`` (the end of the body), so the connection is kept for
        the next request instead of being dropped and made anew."""
        while (yield from self.read_event(stream)) is not None:
            pass

    def _opened_stream(self, request: Request) -> Flow[LineStream]:
        response: Response = yield request
        if response.stream is None:
            yield from self._checked(request, response)
            raise self._malformed(request, response.body[:200])
        return response.stream

    def interrupt(self, session_id: str) -> Flow[None]:
        """Interrupt the code the session is running."""
        request = Request("POST", _session_path(session_id, "interrupt"))
        yield from self._checked(request, (yield request))

    def restart(self, session_id: str) -> Flow[dict[str, Any]]:
        """Give the session a fresh kernel; return its model."""
        request = Request(
            "POST", _session_path(session_id, "restart"), read_timeout=KERNEL_START_READ_TIMEOUT
        )
        return _json_object((yield from self._checked(request, (yield request))))

    def download(self, url: str, path: Path) -> Flow[None]:
        """Save the file at ``url`` (as an execution result lists it) to ``path``."""
        request = Request("GET", url, save_to=path)
        yield from self._checked(request, (yield request))

    def download_file(self, session_id: str, file_id: str, folder: Path) -> Flow[Path]:
        """Save a file of the session into ``folder``, named for its type; return its path."""
        request = Request(
            "GET", _session_path(session_id, "files", quote(file_id, safe="")), save_in=folder
        )
        response: Response = yield request
        yield from self._checked(request, response)
        if response.saved_to is None:
            raise self._malformed(request, response.body[:200])
        return response.saved_to

    def file_bytes(
        self, session_id: str, file_id: str, max_size: int | None = None
    ) -> Flow[tuple[bytes, str]]:
        """A captured file's bytes and media type; an image downscaled by the server to
        ``max_size`` pixels on its long edge (and re-encoded when still large)."""
        path = _session_path(session_id, "files", quote(file_id, safe=""))
        if max_size is not None:
            path += f"?max_size={max_size}"
        request = Request("GET", path)
        response: Response = yield request
        if response.status != 200:
            yield from self._checked(request, response)
        return response.body, response.content_type.split(";")[0].strip()

    # -- the workspace -------------------------------------------------------------------

    def upload(self, session_id: str, local_path: Path, remote_path: str) -> Flow[dict[str, Any]]:
        """Stream a local file into the session's working folder; return its entry model."""
        request = Request(
            "PUT",
            _workspace_path(session_id, remote_path),
            read_timeout=KERNEL_START_READ_TIMEOUT,
            upload_from=local_path,
        )
        return _json_object((yield from self._workspace_answer(request)))

    def download_workspace_file(
        self, session_id: str, remote_path: str, local_path: Path
    ) -> Flow[None]:
        """Stream a file of the session's working folder into ``local_path`` (a new file)."""
        request = Request(
            "GET",
            _workspace_path(session_id, remote_path),
            read_timeout=KERNEL_START_READ_TIMEOUT,
            save_to=local_path,
        )
        response = yield request
        if response.status == 200 and not response.disposition:
            # A folder: what was saved is its listing.
            local_path.unlink(missing_ok=True)
            raise WorkspacePathError(
                400,
                f"{remote_path!r} is a folder, not a file",
                method=request.method,
                url=self.connection_info.url(request.path),
            )
        yield from self._workspace_answer(request, response)

    def list_workspace(self, session_id: str, path: str = "") -> Flow[dict[str, Any]]:
        """The listing of a folder of the session's working folder (the folder itself: '')."""
        request = Request("GET", _workspace_path(session_id, path))
        response = yield request
        answer: Any = {}
        if not response.disposition:  # a file's bytes, not a listing
            answer = yield from self._workspace_answer(request, response)
        if not isinstance(answer, dict) or not isinstance(answer.get("entries"), list):
            raise WorkspacePathError(
                400,
                f"{path!r} is a file, not a folder",
                method=request.method,
                url=self.connection_info.url(request.path),
            )
        return answer

    def delete_workspace_path(self, session_id: str, path: str) -> Flow[None]:
        """Delete a file or folder of the session's working folder."""
        yield from self._workspace_answer(Request("DELETE", _workspace_path(session_id, path)))

    # -- answers -------------------------------------------------------------------------

    def _not_found(self, request: Request, message: str) -> Flow[None]:
        """A missing API, session or workspace file (a missing captured file: APIError)."""
        if request.path.rstrip("/") == SESSIONS_PATH:
            yield from self._explain_missing_api(request)
        if "/executions/" in request.path and not message.startswith("Agent session"):
            raise ExecutionNotFoundError(
                404, message, method=request.method, url=self.connection_info.url(request.path)
            )
        if "/workspace" in request.path and not message.startswith("Agent session not found"):
            raise WorkspaceFileNotFoundError(
                404, message, method=request.method, url=self.connection_info.url(request.path)
            )
        if request.path.startswith(SESSIONS_PATH + "/") and "/files/" not in request.path:
            raise SessionNotFoundError(
                404, message, method=request.method, url=self.connection_info.url(request.path)
            )

    def _explain_missing_api(self, request: Request) -> Flow[NoReturn]:
        """Raise ExtensionMissingError, saying whether a Jupyter server is there at all."""
        base_url = self.connection_info.base_url
        probe = Request("GET", "api")
        try:
            answer: Response | None = yield probe
        except JupyterExecError:
            answer = None
        if answer is not None and answer.status in (401, 403):
            # A server that guards even its version (Kernel Gateway does) refused the token.
            raise AuthenticationError(
                answer.status,
                _server_message(answer),
                method=probe.method,
                url=self.connection_info.url(probe.path),
            )
        version = _reported_version(answer)
        if version:
            explanation = (
                f"The Jupyter server at {base_url} (jupyter_server {version}) has no "
                "agent-session API: install the jupyter-exec-ext extension into the server's "
                "environment and restart the server (`jupyter server extension list` shows "
                "whether it is enabled)."
            )
        else:
            explanation = (
                f"No Jupyter server with the agent-session API answers at {base_url}: check "
                "the URL and its base path, and that the jupyter-exec-ext extension is "
                "installed in the server's environment."
            )
        raise ExtensionMissingError(
            explanation,
            method=request.method,
            url=self.connection_info.url(request.path),
            server_version=version,
        )


def _reported_version(answer: Response | None) -> str | None:
    """The version in a Jupyter server's answer to ``GET api``; None when it is not one."""
    if answer is None or answer.status != 200:
        return None
    try:
        version = json.loads(answer.body).get("version")
    except (ValueError, AttributeError):
        return None
    return version if isinstance(version, str) and version else None


def _session_path(session_id: str, *action: str) -> str:
    return "/".join([SESSIONS_PATH, quote(session_id, safe=""), *action])


def _workspace_path(session_id: str, path: str) -> str:
    """The URL path of a workspace path; each of its parts is quoted, '/' kept between."""
    route = _session_path(session_id, "workspace")
    return f"{route}/{quote(path, safe='/')}" if path.strip("/") else route


def _json_object(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise APIError(200, f"the server answered {answer!r:.200} where an object was expected")
    return answer


def _server_message(response: Response) -> str:
    """The server's JSON ``message``; else the start of the body, else the reason phrase."""
    try:
        message = json.loads(response.body).get("message")
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str) and message:
        return message
    text = response.body.decode("utf-8", "replace").strip()
    if text and not text.lstrip().startswith("<"):
        return text[:300]
    return response.reason or "no message"
