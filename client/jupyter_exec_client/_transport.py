"""HTTP for the API flows: kept-alive connections to a server, used blocking or from a thread."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import socket
import ssl
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from ._api import CloseStream, ReadLine, Request, Response
from ._http import ConnectFailed, ConnectionPool
from ._kernel_output import new_output_path
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
# The useful part of OS and TLS error texts: "[Errno 111] Connection refused",
# "[SSL: WRONG_VERSION_NUMBER] wrong version number".
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
        self._pool: ConnectionPool | None = None
        self._channel: KernelChannel | None = None
        self._headers = {"User-Agent": f"jupyter-exec-client/{__version__}"}
        if connection_info.token:
            self._headers["Authorization"] = f"token {connection_info.token}"

    def perform(self, command: Command) -> Any:
        """Carry out one command of a flow; return what the flow is sent back."""
        if isinstance(command, Request):
            return self.send(command)
        if isinstance(command, ReadLine):
            return command.stream.readline(command.timeout)
        if isinstance(command, CloseStream):
            command.stream.close()
            return None
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

    def _http(self, url: str) -> ConnectionPool:
        if self._pool is None:
            try:
                self._pool = ConnectionPool(self.connection_info)
            except ValueError as e:  # a proxy or CA setting that cannot be used
                raise ServerConnectionError(url, str(e)) from e
        return self._pool

    def send(self, request: Request) -> Response:
        """Send ``request`` and return the answer; raise ServerConnectionError when none came."""
        url = self.connection_info.url(request.path)
        pool = self._http(url)
        headers = {**self._headers, **pool.proxy_headers()}
        body: bytes | BinaryIO | None = None
        if request.body is not None:
            body = json.dumps(request.body).encode()
            headers["Content-Type"] = "application/json"
        if request.upload_from is None:
            return self._exchange(request, url, pool, headers, body)
        with request.upload_from.open("rb") as file:
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(os.fstat(file.fileno()).st_size)
            return self._exchange(request, url, pool, headers, file)

    def _exchange(
        self,
        request: Request,
        url: str,
        pool: ConnectionPool,
        headers: dict[str, str],
        body: bytes | BinaryIO | None,
    ) -> Response:
        """Send one request on a pooled connection and read its answer."""
        try:
            connection = pool.acquire(request.read_timeout, CONNECT_TIMEOUT)
        except ConnectFailed as e:
            cause = e.__cause__ or e
            raise _connection_error(
                url, cause, f"no connection within {CONNECT_TIMEOUT:g} s"
            ) from cause
        try:
            # A file body goes out in big pieces (http.client's default is 8 KB).
            connection.blocksize = _CHUNK_SIZE
            try:
                connection.request(request.method, pool.target(url), body=body, headers=headers)
            except OSError:
                if request.upload_from is None:
                    raise
                # The server may have refused the upload (a 413) and closed its side before
                # taking the whole body: its answer may already be waiting.
            response = connection.getresponse()
            if request.stream and response.status == 200:
                # Given back to the pool by the stream, once its body was read whole.
                return Response(200, reason=response.reason, stream=_HTTPLineStream(
                    url, pool, connection, response
                ))
            if request.save_in is not None and response.status == 200:
                mime_type = (response.getheader("Content-Type") or "").split(";")[0].strip()
                path = new_output_path(request.save_in, mime_type)
                self._save(response, path)
                answer = Response(200, b"", response.reason, saved_to=path)
            elif request.save_to is not None and response.status == 200:
                self._save(response, request.save_to)
                answer = Response(
                    200,
                    b"",
                    response.reason,
                    disposition=response.getheader("Content-Disposition", ""),
                )
            else:
                answer = Response(
                    response.status,
                    response.read(),
                    response.reason,
                    response.getheader("Location", ""),
                    response.getheader("Content-Disposition", ""),
                    content_type=response.getheader("Content-Type", ""),
                )
        except BaseException as e:
            # Half a request or an unread answer leaves the connection unusable.
            connection.close()
            if isinstance(e, (OSError, http.client.HTTPException)):
                raise _connection_error(
                    url, e, f"the server did not answer within {request.read_timeout:g} s"
                ) from e
            raise
        if request.upload_from is not None and response.status >= 300:
            # A refused upload's body may not have been read: the connection is spent.
            connection.close()
        else:
            pool.release(connection, response)
        return answer

    @staticmethod
    def _save(response: http.client.HTTPResponse, path: Path) -> None:
        """Stream the body into ``path``; leave no partial file behind."""
        try:
            with path.open("xb") as file:
                while chunk := response.read(_CHUNK_SIZE):
                    file.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """Close the connections and the kernel websocket."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class _HTTPLineStream:
    """The lines of an answer as they arrive, on a connection of the pool kept for it."""

    def __init__(
        self,
        url: str,
        pool: ConnectionPool,
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
    ) -> None:
        self.url = url
        self._pool = pool
        self._connection: http.client.HTTPConnection | None = connection
        self._response = response

    def readline(self, timeout: float) -> bytes:
        """The next line; b"" at the end (the connection then goes back to the pool)."""
        connection = self._connection
        if connection is None:
            return b""
        try:
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            line = self._response.readline()
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.close()
            raise _connection_error(
                self.url, e, f"the server sent nothing for {timeout:g} s"
            ) from e
        if not line:
            # Read to its end, the answer lets go of the connection, which is kept.
            self._response.read()
            self._connection = None
            self._pool.release(connection, self._response)
        return line

    def close(self) -> None:
        """Drop the connection (the server sees the client go), unless it was read whole.

        Safe to call from another thread than the one reading: the socket is shut down
        first, which wakes a read blocked on it.
        """
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()


def _connection_error(
    url: str, error: BaseException, timeout_message: str
) -> ServerConnectionError:
    """The ServerConnectionError saying why no connection, or no answer, came."""
    if isinstance(error, TimeoutError):
        return ServerConnectionError(url, timeout_message)
    if isinstance(error, ssl.SSLError):
        return ServerConnectionError(url, f"{_reason(error)}{TLS_HINT}")
    return ServerConnectionError(url, _reason(error))


def run_sync(flow: KernelFlow[T], transport: SyncTransport, *, keep_streams: bool = False) -> T:
    """Drive ``flow`` to its end with blocking I/O; return its result.

    Streams the flow opened are closed when it ends, unless ``keep_streams`` (a flow that
    hands its stream to the next one, which then owns it).
    """
    streams: list[Any] = []
    try:
        command = next(flow)
        while True:
            try:
                answer = transport.perform(command)
            except JupyterExecError as error:
                # The flow decides: some calls expect a failure (a probe) and go on.
                command = flow.throw(error)
            else:
                _note_stream(answer, streams)
                command = flow.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        # A call ended by KeyboardInterrupt leaves the flow suspended: run its cleanup now.
        flow.close()
        if not keep_streams:
            _close_streams(streams)


def _note_stream(answer: Any, streams: list[Any]) -> None:
    """Remember a stream a flow opened, to close it however the flow ends."""
    if isinstance(answer, Response) and answer.stream is not None:
        streams.append(answer.stream)


def _close_streams(streams: list[Any]) -> None:
    """Close the streams of a flow that ended: a streamed call abandoned (Ctrl-C, a
    cancelled task, an error) is then seen by the server as gone, which interrupts it.
    A stream read to its end is already back in the pool, and closing it does nothing."""
    for stream in streams:
        stream.close()


async def run_async(
    flow: KernelFlow[T], transport: SyncTransport, *, keep_streams: bool = False
) -> T:
    """Drive ``flow`` to its end, each blocking request or websocket read in a worker thread.

    Streams are closed at the end as by :func:`run_sync`.
    """
    streams: list[Any] = []
    try:
        command = next(flow)
        while True:
            try:
                answer = await asyncio.to_thread(transport.perform, command)
            except JupyterExecError as error:
                command = flow.throw(error)
            else:
                _note_stream(answer, streams)
                command = flow.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        # A cancelled call leaves the flow suspended: run its cleanup now.
        flow.close()
        if not keep_streams:
            _close_streams(streams)


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"[SSL: {error.reason}] certificate verify failed: {error.verify_message}"
    text = str(error)
    match = _OS_ERROR.search(text)
    if match:
        return (match[1] or match[2]).strip()
    return text[:300] or type(error).__name__
