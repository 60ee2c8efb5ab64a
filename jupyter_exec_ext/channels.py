"""Kernel messages handed over as they arrive: a queue readers wait on, and the local client.

jupyter_client's ``AsyncKernelClient`` polls a socket and then reads it, two trips round the
event loop for every message, and jupyter_server watches each kernel's IOPub with a socket of
its own that decodes every message a second time. On the hot path of a small call the two cost
about as much as the kernel itself. :class:`LocalKernelChannels` does the work of both with one
IOPub stream and one callback per message.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from hmac import compare_digest
from queue import Empty
from typing import Any

import zmq
from jupyter_client.adapter import adapt
from jupyter_client.session import Session
from jupyter_server._tz import utcnow

#: Replay protection of a session remembers this many message signatures. jupyter_client's
#: default (65,536) costs a busy session ~7 MB; a message is signed with a fresh uuid, so only
#: a replayed message can repeat a signature, and a replay is a recent copy.
DIGEST_HISTORY_SIZE = 1024

#: Messages on IOPub answer one of the last this many requests sent, or they are not queued.
#: Calls of a session run one at a time, so a handful covers a late answer to a cancelled call.
_TRACKED_REQUESTS = 16

#: Messages ZMQ queues in the server for one kernel's IOPub before it stops reading the
#: socket (its default is 1,000 messages, of any size). The kernel helper sends long texts in
#: pieces of at most 64 KiB and makes the kernel wait instead of dropping, so this bounds what
#: a kernel that writes faster than the server reads costs the server: 64 x 64 KiB = 4 MiB.
IOPUB_QUEUE_MESSAGES = 64


class ShellRequests:
    """The requests sessions send, as jupyter_client's clients send them: for both of our
    kernel clients, which differ only in how a message travels (:meth:`_send_shell`)."""

    def _send_shell(self, msg_type: str, content: dict[str, Any]) -> str:
        """Send a request on the shell channel and return its msg_id."""
        raise NotImplementedError

    def execute(
        self,
        code: str,
        *,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        stop_on_error: bool = True,
    ) -> str:
        """Send an execute_request and return its msg_id."""
        return self._send_shell(
            "execute_request",
            {
                "code": code,
                "silent": silent,
                "store_history": store_history,
                "user_expressions": user_expressions or {},
                "allow_stdin": allow_stdin,
                "stop_on_error": stop_on_error,
            },
        )

    def kernel_info(self) -> str:
        """Send a kernel_info_request and return its msg_id."""
        return self._send_shell("kernel_info_request", {})


def _track_every_message(msg_type: str | None) -> bool:
    """What jupyter_server < 2.15 tracks as kernel activity: every message."""
    return True


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ChannelQueue:
    """The messages of one channel in arrival order; a reader waits on a future, never polls.

    Unlike ``asyncio.wait_for(queue.get(), timeout)`` on Python < 3.12, a message is never lost
    when the timeout and its arrival coincide: it is taken only once the reader runs again.
    """

    def __init__(self) -> None:
        self._messages: deque[dict[str, Any]] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        #: No more messages will come on this connection: a reader gets the rest, then Empty.
        self.closed = False

    def put(self, message: dict[str, Any]) -> None:
        """Add a message and wake the readers."""
        self._messages.append(message)
        self._wake_all()

    def close(self) -> None:
        """Mark the end of the messages; waiting readers get ``Empty`` at once."""
        self.closed = True
        self._wake_all()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _wake(waiter)

    async def get(self, timeout: float | None) -> dict[str, Any]:
        """The next message; ``queue.Empty`` after ``timeout`` seconds (None: no limit)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._messages:
            if self.closed:
                raise Empty
            timer = None
            waiter: asyncio.Future[None] = loop.create_future()
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise Empty
                timer = loop.call_later(remaining, _wake, waiter)
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self._messages.popleft()


class LocalKernelChannels(ShellRequests):
    """A client of one kernel of jupyter_server's kernel manager, on the server's event loop.

    Has the part of ``AsyncKernelClient``'s API that sessions use (``execute``,
    ``kernel_info``, ``get_iopub_msg``, ``get_shell_msg``, ``stop_channels``) and takes over
    jupyter_server's activity watcher for the kernel: ``last_activity`` and ``execution_state``
    are kept as the watcher keeps them, for ``/api/kernels``, culling and JupyterLab.

    Only IOPub messages that answer our own recent requests, and welcomes, are queued: output
    of code a person runs from JupyterLab in the same kernel is not held for a reader that
    never comes.
    """

    def __init__(self, kernel_manager: Any, kernel_id: str) -> None:
        """Connect to the kernel ``kernel_id`` of ``kernel_manager`` (a MappingKernelManager)."""
        self.kernel_manager = kernel_manager
        self.kernel_id = kernel_id
        self.kernel = kernel_manager.get_kernel(kernel_id)
        # A session of our own: a Session remembers the signatures it has seen, and the
        # kernel's is shared with every other client of the kernel in this process.
        self.session = Session(
            config=self.kernel.session.config,
            key=self.kernel.session.key,
            signature_scheme=self.kernel.session.signature_scheme,
            digest_history_size=DIGEST_HISTORY_SIZE,
        )
        self._queues = {"shell": ChannelQueue(), "iopub": ChannelQueue()}
        self._requests: deque[str] = deque(maxlen=_TRACKED_REQUESTS)
        # jupyter_server < 2.15 has no untracked message types: there every message counts
        # as activity and every status sets the execution state, as its own watcher did.
        self._tracks: Callable[[str | None], bool] = getattr(
            kernel_manager, "track_message_type", _track_every_message
        )
        # One watcher is enough: jupyter_server's would decode every message again.
        kernel_manager.stop_watching_activity(kernel_id)
        self._iopub = self.kernel.connect_iopub()
        # Applies to the connection made just now too (libzmq >= 4.2 updates its pipes).
        self._iopub.socket.setsockopt(zmq.RCVHWM, IOPUB_QUEUE_MESSAGES)
        self._shell = self.kernel.connect_shell()
        self._iopub.on_recv(self._on_iopub)
        self._shell.on_recv(self._on_shell)

    def _decode(self, frames: list[bytes], *, content: bool = True) -> dict[str, Any]:
        """A kernel message, checked as ``Session.deserialize`` checks it; dates stay text.

        ``deserialize`` parses the dates of every header with dateutil, two thirds of what
        reading a message costs, and nothing here reads them. The signature and replay
        checks are the same.
        """
        session = self.session
        # Frames from ZMQStream.on_recv are bytes (it copies).
        parts: list[bytes] = session.feed_identities(frames)[1]  # type: ignore[assignment]
        # Signature, header, parent header, metadata, content; then buffers.
        if len(parts) < 5:
            raise ValueError("Malformed kernel message: fewer than 5 parts")
        if session.auth is not None:
            signature = parts[0]
            if signature in session.digest_history:
                raise ValueError(f"Duplicate signature: {signature!r}")
            if not compare_digest(signature, session.sign(parts[1:5])):
                raise ValueError(f"Invalid signature: {signature!r}")
            session._add_digest(signature)
        header = session.unpack(parts[1])
        return adapt(
            {
                "header": header,
                "msg_id": header["msg_id"],
                "msg_type": header["msg_type"],
                "parent_header": session.unpack(parts[2]),
                "metadata": session.unpack(parts[3]),
                "content": session.unpack(parts[4]) if content else parts[4],
                "buffers": [memoryview(buffer) for buffer in parts[5:]],
            }
        )

    def _on_iopub(self, frames: list[bytes]) -> None:
        # The content is decoded only when it is needed: a status, or an answer to us.
        msg = self._decode(frames, content=False)
        msg_type = msg["header"]["msg_type"]
        # A welcome greets a new subscriber (ipykernel >= 7): it tells a starting connection
        # that its subscription is in place.
        ours = msg["parent_header"].get("msg_id") in self._requests or msg_type == "iopub_welcome"
        if ours or msg_type == "status":
            msg["content"] = self.session.unpack(msg["content"])
        self._record_activity(msg)
        if ours:
            self._queues["iopub"].put(msg)

    def _on_shell(self, frames: list[bytes]) -> None:
        self._queues["shell"].put(self._decode(frames))

    def _record_activity(self, msg: dict[str, Any]) -> None:
        """What jupyter_server's ``start_watching_activity`` records, from an IOPub message."""
        manager, kernel = self.kernel_manager, self.kernel
        msg_type = msg["header"]["msg_type"]
        parent_type = msg["parent_header"].get("msg_type")
        tracked = self._tracks(parent_type)
        if self._tracks(msg_type) or tracked or kernel.execution_state == "busy":
            manager.last_kernel_activity = kernel.last_activity = utcnow()
        if msg_type == "status":
            state = msg["content"].get("execution_state")
            if tracked:
                kernel.execution_state = state
            elif kernel.execution_state == "starting" and state != "starting":
                kernel.execution_state = "idle"

    def _send_shell(self, msg_type: str, content: dict[str, Any]) -> str:
        message = self.session.msg(msg_type, content)
        msg_id: str = message["header"]["msg_id"]
        self._requests.append(msg_id)
        # Through the stream, never the socket itself: a send on the socket can take the
        # edge of its file descriptor that tells the stream a reply is waiting.
        self.session.send(self._shell, message)
        return msg_id

    async def get_iopub_msg(self, timeout: float | None = None) -> dict[str, Any]:
        """The next IOPub message answering us; ``queue.Empty`` after ``timeout`` seconds."""
        return await self._queues["iopub"].get(timeout)

    async def get_shell_msg(self, timeout: float | None = None) -> dict[str, Any]:
        """The next shell reply; ``queue.Empty`` after ``timeout`` seconds."""
        return await self._queues["shell"].get(timeout)

    def stop_channels(self) -> None:
        """Close both streams; waiting readers get ``Empty``.

        jupyter_server's watcher is not started again: a session closes its channels only to
        restart or shut the kernel down, and a restart opens new ones.
        """
        for stream in (self._iopub, self._shell):
            if not stream.closed():
                stream.close()
        for queue in self._queues.values():
            queue.close()
