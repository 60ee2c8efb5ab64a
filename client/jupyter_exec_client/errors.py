"""The exceptions of jupyter_exec_client: one tree with one root, :class:`JupyterExecError`.

::

    JupyterExecError
    ├── ServerConnectionError      (also ConnectionError) the server cannot be reached
    ├── APIError                   the server answered with an HTTP error
    │   ├── AuthenticationError    401/403: a missing or wrong token
    │   ├── ExtensionMissingError  404: the server has no agent-session API (and no fallback)
    │   ├── SessionNotFoundError   404: the agent session (or, on a plain server, the kernel)
    │   │   │                      is gone
    │   │   └── SessionLostError   an executor's session was gone and a new one replaced
    │   │                          it (from a background start; runs return a result)
    │   ├── ExecutionNotFoundError 404: no background execution of that id (or it was
    │   │                          forgotten, past the server's finished_execution_ttl)
    │   ├── UnknownKernelError     (also ValueError) no kernel of that name
    │   ├── WorkspacePathError     (also ValueError) the server refused a workspace path
    │   │                          ('..', outside the folder, a folder where a file must be)
    │   └── WorkspaceFileNotFoundError  (also FileNotFoundError) no such file or folder in
    │                              the session's workspace
    ├── WorkspaceUnavailableError  the server has no way to move files (Kernel Gateway
    │                              without the extension has no Contents API)
    ├── ExecutorClosedError        (also RuntimeError) the executor was stopped
    ├── BackgroundUnsupportedError (also RuntimeError) background runs need the extension
    └── ServerStartError           (also RuntimeError) a Local/DockerJupyterServer failed to start

A server without the agent-session API is used through its kernels API and a kernel
websocket; without the ``websocket-client`` package that raises :class:`ImportError`, naming
``pip install "jupyter-exec-client[websocket]"``.

Arguments that are wrong before anything is sent (a missing ``output_dir``, a timeout below
1 second) raise a plain :class:`ValueError`, as AutoGen's executor does; a local file that
is not there to upload raises :class:`FileNotFoundError`, as ``open`` does.
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "AuthenticationError",
    "BackgroundUnsupportedError",
    "ExecutionNotFoundError",
    "ExecutorClosedError",
    "ExtensionMissingError",
    "JupyterExecError",
    "ServerConnectionError",
    "ServerStartError",
    "SessionLostError",
    "SessionNotFoundError",
    "UnknownKernelError",
    "WorkspaceFileNotFoundError",
    "WorkspacePathError",
    "WorkspaceUnavailableError",
]

#: Added to a TLS failure: what to do about a server with a private or self-signed certificate.
TLS_HINT = (
    " (the server's TLS certificate was not accepted: for a private or self-signed "
    "certificate pass its CA file as JupyterConnectionInfo(..., verify='/path/to/ca.pem'))"
)


class JupyterExecError(Exception):
    """The root of every error this package raises on purpose."""


class ServerConnectionError(JupyterExecError, ConnectionError):
    """The Jupyter server could not be reached, or did not answer in time."""

    def __init__(self, url: str, reason: str) -> None:
        """Say which ``url`` failed and why."""
        super().__init__(f"Cannot reach the Jupyter server at {url}: {reason}")
        self.url = url
        self.reason = reason


class APIError(JupyterExecError):
    """The server answered a request with an HTTP error status.

    ``status`` is the HTTP status and ``message`` the server's own message; ``str(error)``
    adds the request and, for the subclasses, what to do about it.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        method: str = "",
        url: str = "",
        explanation: str | None = None,
    ) -> None:
        """Keep the HTTP ``status``, the server's ``message`` and the request."""
        request = f"{method} {url} " if method else ""
        super().__init__(explanation or f"{request}failed with HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.method = method
        self.url = url


class AuthenticationError(APIError):
    """The server refused the request: the token is missing or wrong (HTTP 401 or 403)."""

    def __init__(self, status: int, message: str, *, method: str = "", url: str = "") -> None:
        """Explain what to check, keeping the server's ``message``."""
        super().__init__(
            status,
            message,
            method=method,
            url=url,
            explanation=f"The Jupyter server refused {method} {url} (HTTP {status}: {message}): "
            "the token is missing or wrong, or the server's authorizer forbids the request.",
        )


class ExtensionMissingError(APIError):
    """The server answers, but has no agent-session API (the extension is not installed).

    ``server_version`` is the version a Jupyter server at that address reported, None when
    no Jupyter server answered there at all. The executors fall back to the standard kernels
    API of such a server unless told not to; this error is raised when they cannot.
    """

    def __init__(
        self,
        explanation: str,
        *,
        method: str = "",
        url: str = "",
        server_version: str | None = None,
    ) -> None:
        """Keep the ``explanation`` of what is there instead and what to install."""
        super().__init__(404, "Not Found", method=method, url=url, explanation=explanation)
        self.server_version = server_version


class SessionNotFoundError(APIError):
    """The agent session no longer exists (deleted, culled, or the server restarted)."""


class SessionLostError(SessionNotFoundError):
    """An executor's session was gone and a new one replaced it; the call was not run.

    Raised where no result can say so (a background start); ``execute_code_blocks`` and
    ``run`` return a failed result with the same message instead.
    """


class ExecutionNotFoundError(APIError):
    """The session has no background execution of that id (never, or no longer: finished
    executions are kept for a bounded time and number)."""


class UnknownKernelError(APIError, ValueError):
    """The server has no kernel of the requested name; ``available_kernels`` lists those it has.

    Its message begins as AutoGen's ``ValueError`` for this does ("Kernel ... is not
    installed."), so code that matches that message matches this one.
    """

    def __init__(
        self,
        kernel_name: str,
        available_kernels: list[str],
        *,
        method: str = "",
        url: str = "",
    ) -> None:
        """Keep the requested ``kernel_name`` and the ``available_kernels``."""
        message = (
            f"Kernel {kernel_name!r} is not installed. The server's kernels are: "
            f"{', '.join(available_kernels) or '(none)'}."
        )
        super().__init__(400, message, method=method, url=url, explanation=message)
        self.kernel_name = kernel_name
        self.available_kernels = available_kernels


class WorkspacePathError(APIError, ValueError):
    """The server refused a path of the session's workspace (HTTP 400 or 409): ``..``, an
    absolute path, a symlink out of the folder, a file where a folder is, or the reverse."""


class WorkspaceFileNotFoundError(APIError, FileNotFoundError):
    """No file or folder at that path of the session's workspace (HTTP 404)."""


class WorkspaceUnavailableError(JupyterExecError):
    """The server cannot move files in and out: it has neither the agent-session API nor a
    Contents API (Jupyter Kernel Gateway, for one)."""


class ExecutorClosedError(JupyterExecError, RuntimeError):
    """The executor was stopped; it has no agent session to run code in."""


class BackgroundUnsupportedError(JupyterExecError, RuntimeError):
    """Background runs need the agent-session API; this server has none (the executor runs
    code over a kernel websocket, which lives only as long as its connection)."""


class ServerStartError(JupyterExecError, RuntimeError):
    """A :class:`~jupyter_exec_client.LocalJupyterServer` or ``DockerJupyterServer`` could not start."""
