"""HTTP/1.1 to one Jupyter server over kept-alive connections of the standard library.

An agent's small call is a few milliseconds end to end, and the HTTP client's own work is part
of every one. Measured on these machines against the same server, a request through
``requests`` took ~1.1 ms more than through ``http.client``, and one through urllib3 (the pool
under ``requests``) 0.4-0.6 ms more: they parse the URL, merge settings and wrap the response
anew each time. This pool does only what a client of one server needs: TLS as ``requests``
verifies it, the environment's proxy as ``requests`` picks it, connections reused while they
last, and errors that say whether no connection was made or no answer came.
"""

from __future__ import annotations

import base64
import http.client
import os
import select
import socket
import ssl
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

import requests.utils

from .connection import JupyterConnectionInfo

#: Idle connections kept for reuse; more are opened when several threads call at once.
MAX_IDLE_CONNECTIONS = 4


class ConnectFailed(Exception):
    """No connection to the server (or through its proxy) could be made; ``__cause__`` says why."""


class ConnectionPool:
    """Kept-alive connections to the server of ``connection_info``; safe to use from threads.

    The environment is read once, here, with the rules ``requests`` applies per request: a
    proxy from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` unless ``NO_PROXY`` names the
    server, and for ``verify=True`` the CAs of ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``
    when set, else certifi's.
    """

    def __init__(self, connection_info: JupyterConnectionInfo) -> None:
        """Connect to ``connection_info``'s server when a request needs a connection."""
        self.connection_info = connection_info
        origin = urlsplit(connection_info.origin)
        self.host = origin.hostname or connection_info.host
        self.port = origin.port or (443 if connection_info.use_https else 80)
        self.tls = tls_context(connection_info.verify) if connection_info.use_https else None
        self.proxy = _proxy_for(connection_info)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def target(self, url: str) -> str:
        """What goes on the request line: the path, or the whole URL to a plain HTTP proxy."""
        if self.proxy is not None and self.tls is None:
            return url
        parts = urlsplit(url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def proxy_headers(self) -> dict[str, str]:
        """Headers a plain HTTP proxy needs on each request (its credentials)."""
        if self.proxy is None or self.tls is not None:
            return {}
        return _proxy_auth(self.proxy)

    def acquire(self, read_timeout: float, connect_timeout: float) -> http.client.HTTPConnection:
        """A connection ready for one request; give it back with :meth:`release`.

        Raises :class:`ConnectFailed` when a new connection cannot be made.
        """
        connection = None
        with self._lock:
            while self._idle and connection is None:
                candidate = self._idle.pop()
                if _dropped(candidate):
                    candidate.close()
                else:
                    connection = candidate
        if connection is None:
            connection = self._connect(connect_timeout)
        assert connection.sock is not None
        connection.sock.settimeout(read_timeout)
        return connection

    def release(self, connection: http.client.HTTPConnection, response: Any) -> None:
        """Keep ``connection`` for the next request, once its ``response`` was read whole."""
        if response.will_close or connection.sock is None:
            connection.close()
            return
        with self._lock:
            if len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        host, port = (
            (self.proxy.hostname, self.proxy.port) if self.proxy else (self.host, self.port)
        )
        connection: http.client.HTTPConnection
        if self.tls is not None:
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=self.tls)
            if self.proxy is not None:
                connection.set_tunnel(self.host, self.port, headers=_proxy_auth(self.proxy))
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.connect()
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise ConnectFailed from e
        assert connection.sock is not None
        # A request and its body go out at once, not after the server's delayed ACK.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """Certificate checking as ``verify`` means it to ``requests``.

    Raises ValueError when the CA file or folder cannot be read.
    """
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if verify is True:
        verify = (
            os.environ.get("REQUESTS_CA_BUNDLE")
            or os.environ.get("CURL_CA_BUNDLE")
            or requests.utils.DEFAULT_CA_BUNDLE_PATH
        )
    try:
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load CAs from {verify} ({e.strerror or e})") from e


class _Proxy:
    """An ``http://`` proxy's address and credentials."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http":
            shown = _no_credentials(url)
            raise ValueError(f"Only http:// proxies are supported, not {parts.scheme}:// ({shown})")
        self.hostname = parts.hostname or ""
        self.port = parts.port or 80
        self.username = unquote(parts.username or "")
        self.password = unquote(parts.password or "")


def _proxy_for(connection_info: JupyterConnectionInfo) -> _Proxy | None:
    proxies = requests.utils.get_environ_proxies(connection_info.base_url)
    scheme = "https" if connection_info.use_https else "http"
    url = proxies.get(scheme) or proxies.get("all")
    return _Proxy(url) if url else None


def _proxy_auth(proxy: _Proxy) -> dict[str, str]:
    if not proxy.username:
        return {}
    credentials = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
    return {"Proxy-Authorization": f"Basic {credentials}"}


def _no_credentials(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(f"{parts.username}:{parts.password}@", "") if parts.password else url


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle connection was closed by the server (it reads as ready, with EOF)."""
    if connection.sock is None:
        return True
    try:
        readable, _, _ = select.select([connection.sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
