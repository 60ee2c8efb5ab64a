"""A kernel's websocket (``api/kernels/<id>/channels``), with blocking I/O (websocket-client).

Messages travel as JSON text frames, each naming its ``channel``. The token goes in the
``Authorization`` header, and TCP_NODELAY is set: without it every small message waits
for a delayed ACK (about 40 ms each way).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import ssl
import threading
from typing import Any

from ._kernel_protocol import ChannelClosedError, require_websocket_client
from .connection import JupyterConnectionInfo
from .errors import TLS_HINT, APIError, AuthenticationError, ServerConnectionError

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
#: Seconds to wait for the connection and the handshake, and for the rest of a started frame.
SOCKET_TIMEOUT = 30.0


class KernelChannel:
    """One websocket to one kernel at a time; safe to use from several threads in turn."""

    def __init__(self, connection_info: JupyterConnectionInfo) -> None:
        """Connect to kernels of the server of ``connection_info`` with its token."""
        require_websocket_client()
        self.connection_info = connection_info
        self._socket: Any = None
        # An abandoned receive (a cancelled async call) may still run in its worker thread:
        # the next command waits for it instead of reading the same socket at once.
        self._lock = threading.Lock()

    def open(self, path: str) -> None:
        """Connect to the websocket at ``path`` (relative to the base URL), closing any other."""
        import websocket  # noqa: PLC0415 - an optional dependency, needed only here

        url = _websocket_url(self.connection_info.url(path))
        header = []
        if self.connection_info.token:
            header.append(f"Authorization: token {self.connection_info.token}")
        with self._lock:
            self._close()
            try:
                self._socket = websocket.create_connection(
                    url,
                    header=header,
                    timeout=SOCKET_TIMEOUT,
                    sockopt=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
                    sslopt=_ssl_options(self.connection_info.verify),
                    # Not a browser: an Origin header would only meet the server's CORS checks.
                    suppress_origin=True,
                    enable_multithread=True,
                )
            except websocket.WebSocketBadStatusException as e:
                raise _handshake_error(e.status_code, str(e), url) from e
            except ssl.SSLError as e:
                raise ServerConnectionError(_printable(url), _reason(e) + TLS_HINT) from e
            except (OSError, websocket.WebSocketException) as e:
                raise ServerConnectionError(_printable(url), _reason(e)) from e

    def send(self, message: dict[str, Any]) -> None:
        """Send one message."""
        import websocket  # noqa: PLC0415

        with self._lock:
            connection = self._connected()
            try:
                connection.send(json.dumps(message))
            except (OSError, websocket.WebSocketException) as e:
                self._close()
                raise ChannelClosedError(_printable(connection.url), _reason(e)) from e

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, None when none came within ``timeout`` seconds.

        A message that is not JSON text (a binary frame, with buffers) comes back as ``{}``.
        """
        import websocket  # noqa: PLC0415

        with self._lock:
            connection = self._connected()
            try:
                _ack_at_once(connection.sock)
                if not _readable(connection.sock, timeout):
                    return None
                opcode, frame = connection.recv_data_frame(control_frame=True)
            except (OSError, websocket.WebSocketException) as e:
                self._close()
                raise ChannelClosedError(_printable(connection.url), _reason(e)) from e
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self._close()
                raise ChannelClosedError(_printable(connection.url), "the server closed it")
            if opcode != websocket.ABNF.OPCODE_TEXT:
                return {}  # a ping, or a binary message this client does not read
            try:
                message = json.loads(frame.data)
            except ValueError:
                return {}
            return message if isinstance(message, dict) else {}

    def close(self) -> None:
        """Close the websocket; closing twice is harmless."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._socket is not None:
            socket_, self._socket = self._socket, None
            try:
                socket_.close(timeout=1)
            except Exception:  # a failed goodbye changes nothing
                socket_.shutdown()

    def _connected(self) -> Any:
        if self._socket is None or not self._socket.connected:
            raise ChannelClosedError(self.connection_info.base_url, "the websocket is not open")
        return self._socket


def _ack_at_once(sock: Any) -> None:
    """Ask Linux to acknowledge what arrives next at once instead of up to 40 ms later.

    Servers send their messages without TCP_NODELAY (jupyter_server, Kernel Gateway): each
    small message then waits for the acknowledgement of the one before, which the client
    would delay. The option does not stick, so it is set again before every read.
    """
    if _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


def _readable(sock: Any, timeout: float) -> bool:
    """Whether a frame can be read now or within ``timeout`` seconds."""
    # TLS may hold decrypted bytes that select() on the raw socket cannot see.
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)


def _websocket_url(http_url: str) -> str:
    if http_url.startswith("https://"):
        return "wss://" + http_url.removeprefix("https://")
    return "ws://" + http_url.removeprefix("http://")


def _printable(url: str) -> str:
    """The URL without its query (the client session id is noise in an error)."""
    return url.split("?", 1)[0]


def _ssl_options(verify: bool | str) -> dict[str, Any]:
    """websocket-client's TLS options for a ``verify`` as ``requests`` takes it."""
    if verify is False:
        return {"cert_reqs": ssl.CERT_NONE, "check_hostname": False}
    if isinstance(verify, str):
        where = "ca_cert_path" if os.path.isdir(verify) else "ca_certs"
        return {"cert_reqs": ssl.CERT_REQUIRED, where: verify}
    return {"cert_reqs": ssl.CERT_REQUIRED}


def _handshake_error(status: int, text: str, url: str) -> APIError:
    message = text.splitlines()[0] if text else "handshake refused"
    if status in (401, 403):
        return AuthenticationError(status, message, method="GET", url=_printable(url))
    return APIError(status, message, method="GET", url=_printable(url))


def _reason(error: BaseException) -> str:
    return str(error)[:300] or type(error).__name__
