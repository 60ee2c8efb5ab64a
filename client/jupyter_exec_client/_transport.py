"""HTTP for the API flows: one kept-alive ``requests.Session``, driven blocking or from a thread."""

from __future__ import annotations

import asyncio
import re
from typing import Any, TypeVar

import requests

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
    """Sends requests to one server over one kept-alive connection, and kernel messages over
    a kernel's websocket when a flow asks for one.

    The connection (a ``requests.Session``) is opened on the first request and closed by
    :meth:`close`; a later request opens it again.
    """

    def __init__(self, connection_info: JupyterConnectionInfo) -> None:
        """Talk to the server of ``connection_info`` with its token."""
        self.connection_info = connection_info
        self._session: requests.Session | None = None
        self._channel: KernelChannel | None = None

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

    def _http(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            if self.connection_info.token:
                session.headers["Authorization"] = f"token {self.connection_info.token}"
            self._session = session
        return self._session

    def send(self, request: Request) -> Response:
        """Send ``request`` and return the answer; raise ServerConnectionError when none came."""
        url = self.connection_info.url(request.path)
        try:
            answer = self._http().request(
                request.method,
                url,
                json=request.body,
                timeout=(CONNECT_TIMEOUT, request.read_timeout),
                stream=request.save_to is not None,
                allow_redirects=False,
                # Per request, not on the session: requests lets REQUESTS_CA_BUNDLE and
                # CURL_CA_BUNDLE override a session's verify, but not a request's.
                verify=self.connection_info.verify,
            )
        except requests.ConnectTimeout as e:
            raise ServerConnectionError(url, f"no connection within {CONNECT_TIMEOUT:g} s") from e
        except requests.ReadTimeout as e:
            raise ServerConnectionError(
                url, f"the server did not answer within {request.read_timeout:g} s"
            ) from e
        except requests.exceptions.SSLError as e:
            raise ServerConnectionError(url, f"{_reason(e)}{TLS_HINT}") from e
        except requests.RequestException as e:
            raise ServerConnectionError(url, _reason(e)) from e
        with answer:
            if request.save_to is not None and answer.status_code == 200:
                self._save(answer, request, url)
                return Response(200, b"", answer.reason)
            try:
                body = answer.content
            except requests.RequestException as e:
                raise ServerConnectionError(url, _reason(e)) from e
            return Response(
                answer.status_code,
                body,
                answer.reason or "",
                answer.headers.get("Location", ""),
            )

    @staticmethod
    def _save(answer: requests.Response, request: Request, url: str) -> None:
        """Stream the body into ``request.save_to``; leave no partial file behind."""
        assert request.save_to is not None
        try:
            with request.save_to.open("xb") as file:
                for chunk in answer.iter_content(_CHUNK_SIZE):
                    file.write(chunk)
        except BaseException as e:
            request.save_to.unlink(missing_ok=True)
            if isinstance(e, requests.RequestException):
                raise ServerConnectionError(url, _reason(e)) from e
            raise

    def close(self) -> None:
        """Close the connection and the kernel websocket."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._session is not None:
            self._session.close()
            self._session = None


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
