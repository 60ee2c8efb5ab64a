"""HTTP for the API flows: one pool of kept-alive connections, driven blocking or from a thread.

Requests go through urllib3, the connection pool under ``requests``: a call through
``requests.Session`` costs about 1 ms more (it merges the environment's proxy and CA settings,
cookies and hooks anew for every request), a sixth of a whole small call. The environment is
read once, when the pool is made, with the rules ``requests`` applies.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any, TypeVar

import requests.utils
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

from ._api import Request, Response
from ._kernel_protocol import (
    ChannelClosedError,
    CloseChannel,
    Command,
    KernelFlow,
    OpenChannel,
    ReceiveMessage,
    SendMessage,
)
from ._version import __version__
from ._websocket import KernelChannel
from .connection import JupyterConnectionInfo
from .errors import TLS_HINT, JupyterExecError, ServerConnectionError

T = TypeVar("T")

#: Seconds to wait for the TCP (and TLS) connection to the server.
CONNECT_TIMEOUT = 10.0
_CHUNK_SIZE = 1 << 20
# The useful part of requests' and urllib3's nested error texts: "[Errno 111] Connection
# refused", "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ...".
_OS_ERROR = re.compile(r"\[Errno -?\d+\] ([^'\")]+)|(\[SSL[^\]]*\][^'\")]+)")


class SyncTransport:
    """Sends requests to one server over kept-alive connections, and kernel messages over
    a kernel's websocket when a flow asks for one.

    The connection pool is made on the first request and closed by :meth:`close`; a later
    request makes it again. It is safe to use from several threads at once.
    """

    def __init__(self, connection_info: JupyterConnectionInfo) -> None:
        """Talk to the server of ``connection_info`` with its token."""
        self.connection_info = connection_info
        self._pool: urllib3.PoolManager | None = None
        self._channel: KernelChannel | None = None
        self._headers = {"User-Agent": f"jupyter-exec-client/{__version__}"}
        if connection_info.token:
            self._headers["Authorization"] = f"token {connection_info.token}"

    def perform(self, command: Command) -> Any:
        """Carry out one command of a flow; return what the flow is sent back."""
        if isinstance(command, Request):
            return self.send(command)
        if isinstance(command, ReceiveMessage):
            return self._kernel_channel().receive(command.timeout)
        if isinstance(command, SendMessage):
            self._kernel_channel().send(command.message)
        elif isinstance(command, OpenChannel):
            if self._channel is None:
                self._channel = KernelChannel(self.connection_info)
            self._channel.open(command.path)
        elif isinstance(command, CloseChannel) and self._channel is not None:
            self._channel.close()
        return None

    def _kernel_channel(self) -> KernelChannel:
        if self._channel is None:
            raise ChannelClosedError(self.connection_info.base_url, "no websocket was opened")
        return self._channel

    def _http(self) -> urllib3.PoolManager:
        if self._pool is None:
            self._pool = pool_manager(self.connection_info)
        return self._pool

    def send(self, request: Request) -> Response:
        """Send ``request`` and return the answer; raise ServerConnectionError when none came."""
        url = self.connection_info.url(request.path)
        headers = self._headers
        body = None
        if request.body is not None:
            body = json.dumps(request.body).encode()
            headers = {**headers, "Content-Type": "application/json"}
        streamed = request.save_to is not None
        try:
            answer = self._http().request(
                request.method,
                url,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=request.read_timeout),
                retries=False,
                redirect=False,
                preload_content=not streamed,
            )
        except HTTPError as e:
            raise _connection_error(url, e, request.read_timeout) from e
        try:
            if streamed and answer.status == 200:
                self._save(answer, request, url)
                return Response(200, b"", answer.reason or "")
            try:
                content = answer.data
            except HTTPError as e:
                raise _connection_error(url, e, request.read_timeout) from e
            return Response(
                answer.status, content, answer.reason or "", answer.headers.get("Location", "")
            )
        finally:
            answer.release_conn()

    @staticmethod
    def _save(answer: urllib3.BaseHTTPResponse, request: Request, url: str) -> None:
        """Stream the body into ``request.save_to``; leave no partial file behind."""
        assert request.save_to is not None
        try:
            with request.save_to.open("xb") as file:
                for chunk in answer.stream(_CHUNK_SIZE):
                    file.write(chunk)
        except BaseException as e:
            request.save_to.unlink(missing_ok=True)
            if isinstance(e, HTTPError):
                raise _connection_error(url, e, request.read_timeout) from e
            raise

    def close(self) -> None:
        """Close the connections and the kernel websocket."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._pool is not None:
            self._pool.clear()
            self._pool = None


def pool_manager(connection_info: JupyterConnectionInfo) -> urllib3.PoolManager:
    """A connection pool for the server, set up from the environment as ``requests`` does.

    A proxy comes from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` unless ``NO_PROXY`` names
    the server. ``verify=True`` checks certificates against ``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE`` when set, else certifi's bundle; a path names a CA file or folder.
    """
    verify = connection_info.verify
    tls: dict[str, Any] = {}
    if connection_info.use_https:
        if verify is False:
            tls["cert_reqs"] = "CERT_NONE"
        else:
            if verify is True:
                verify = (
                    os.environ.get("REQUESTS_CA_BUNDLE")
                    or os.environ.get("CURL_CA_BUNDLE")
                    or requests.utils.DEFAULT_CA_BUNDLE_PATH
                )
            tls["cert_reqs"] = "CERT_REQUIRED"
            tls["ca_cert_dir" if os.path.isdir(verify) else "ca_certs"] = verify
    proxies = requests.utils.get_environ_proxies(connection_info.base_url)
    scheme = "https" if connection_info.use_https else "http"
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy:
        username, password = requests.utils.get_auth_from_url(proxy)
        proxy_headers = (
            urllib3.make_headers(proxy_basic_auth=f"{username}:{password}") if username else None
        )
        return urllib3.ProxyManager(proxy, proxy_headers=proxy_headers, **tls)
    return urllib3.PoolManager(**tls)


def _connection_error(url: str, error: HTTPError, read_timeout: float) -> ServerConnectionError:
    """The ServerConnectionError that says why no answer came."""
    # NewConnectionError is a ConnectTimeoutError in urllib3: look at it first.
    if isinstance(error, ConnectTimeoutError) and not isinstance(error, NewConnectionError):
        return ServerConnectionError(url, f"no connection within {CONNECT_TIMEOUT:g} s")
    if isinstance(error, ReadTimeoutError):
        return ServerConnectionError(url, f"the server did not answer within {read_timeout:g} s")
    if isinstance(error, SSLError):
        return ServerConnectionError(url, f"{_reason(error)}{TLS_HINT}")
    return ServerConnectionError(url, _reason(error))


def run_sync(flow: KernelFlow[T], transport: SyncTransport) -> T:
    """Drive ``flow`` to its end with blocking I/O; return its result."""
    try:
        command = next(flow)
        while True:
            try:
                answer = transport.perform(command)
            except JupyterExecError as error:
                # The flow decides: some calls expect a failure (a probe) and go on.
                command = flow.throw(error)
            else:
                command = flow.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        # A call ended by KeyboardInterrupt leaves the flow suspended: run its cleanup now.
        flow.close()


async def run_async(flow: KernelFlow[T], transport: SyncTransport) -> T:
    """Drive ``flow`` to its end, each blocking request or websocket read in a worker thread."""
    try:
        command = next(flow)
        while True:
            try:
                answer = await asyncio.to_thread(transport.perform, command)
            except JupyterExecError as error:
                command = flow.throw(error)
            else:
                command = flow.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        # A cancelled call leaves the flow suspended: run its cleanup now.
        flow.close()


def _reason(error: Exception) -> str:
    text = str(error)
    match = _OS_ERROR.search(text)
    if match:
        return (match[1] or match[2]).strip()
    return text[:300] or type(error).__name__
