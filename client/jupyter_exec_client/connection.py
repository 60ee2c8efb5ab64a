"""Where a Jupyter server is and how to authenticate to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

__all__ = ["JupyterConnectable", "JupyterConnectionInfo", "as_connection_info"]


@dataclass
class JupyterConnectionInfo:
    """The address and token of a Jupyter server (the fields of AutoGen's class, and more).

    ``base_path`` is the server's ``base_url`` (``/user/alice/`` for a JupyterHub user
    server); ``verify`` means what it means to ``requests``: True checks TLS certificates
    against ``REQUESTS_CA_BUNDLE`` (or certifi's CAs), a path names a CA bundle, False turns
    checking off.
    """

    host: str
    use_https: bool
    port: int | None = None
    # Kept out of repr(): connection infos end up in logs and tracebacks.
    token: str | None = field(default=None, repr=False)
    base_path: str = field(default="/", kw_only=True)
    verify: bool | str = field(default=True, kw_only=True)

    @classmethod
    def from_url(
        cls, url: str, token: str | None = None, *, verify: bool | str = True
    ) -> JupyterConnectionInfo:
        """Connection info for a server URL such as ``https://hub.example.org/user/alice/``."""
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Not an http(s) URL of a Jupyter server: {url!r}")
        return cls(
            host=parts.hostname,
            use_https=parts.scheme == "https",
            port=parts.port,
            token=token,
            base_path=parts.path or "/",
            verify=verify,
        )

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``, the part of a URL before any path."""
        scheme = "https" if self.use_https else "http"
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        port = "" if self.port is None else f":{self.port}"
        return f"{scheme}://{host}{port}"

    @property
    def base_url(self) -> str:
        """The server's base URL, ending in ``/``: API paths are relative to it."""
        path = "/" + self.base_path.strip("/")
        return self.origin + (path if path == "/" else path + "/")

    def url(self, path: str) -> str:
        """The URL of ``path``: relative paths are taken from the base URL, ``/...`` from the
        origin (the server's file URLs already include its base path)."""
        if path.startswith("/"):
            return self.origin + path
        return self.base_url + path


@runtime_checkable
class JupyterConnectable(Protocol):
    """Anything that knows where its Jupyter server is, such as a LocalJupyterServer."""

    @property
    def connection_info(self) -> JupyterConnectionInfo:
        """The address and token of the server."""
        ...


def as_connection_info(server: Any) -> JupyterConnectionInfo:
    """The connection info of ``server``: a connection info, or something that has one.

    AutoGen's own ``JupyterConnectionInfo`` (or anything with ``host`` and ``use_https``) is
    accepted too, so code written for AutoGen works with an import changed.
    """
    if isinstance(server, JupyterConnectionInfo):
        return server
    if isinstance(server, JupyterConnectable):
        return as_connection_info(server.connection_info)
    if hasattr(server, "host") and hasattr(server, "use_https"):
        return JupyterConnectionInfo(
            host=server.host,
            use_https=bool(server.use_https),
            port=getattr(server, "port", None),
            token=getattr(server, "token", None),
        )
    raise TypeError(
        "jupyter_server must be a JupyterConnectionInfo or have a connection_info property "
        f"(such as a LocalJupyterServer), not {type(server).__name__}"
    )
