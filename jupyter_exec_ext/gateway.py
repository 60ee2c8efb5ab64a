"""Kernels on a Jupyter Kernel or Enterprise Gateway (``jupyter server --gateway-url=...``).

With a gateway URL, ``serverapp.kernel_manager`` is a ``GatewayMappingKernelManager``: it starts,
interrupts, restarts and shuts kernels down through the gateway's REST API. Talking to a kernel
goes through the gateway's kernel websocket (``{ws_url}/api/kernels/{id}/channels``), and
jupyter_server's own client for it (``GatewayKernelClient``, as of 2.21) cannot be used here: it
opens the websocket without the gateway's auth header, polls a CPU core at 100% while it waits,
sends messages without their ``channel`` and waits ~40 ms per message (Nagle's algorithm).

:class:`GatewayKernelWebsocket` is the client used instead: one tornado websocket with the
gateway's headers, TLS and timeouts, TCP_NODELAY and quick ACKs, one reader task that files
each message under its channel, and readers that wait on futures.
:class:`GatewayKernelConnection` is the :class:`~jupyter_exec_ext.kernel.KernelConnection` that
uses it, so agent sessions behave on a gateway as they do locally (timeouts interrupt, deaths
are reported and recovered from).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.session import Session
from jupyter_core.utils import ensure_async
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayMappingKernelManager
from jupyter_server.services.kernels.connection.base import deserialize_binary_message
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.escape import url_escape
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect
from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from .channels import ChannelQueue, ShellRequests
from .kernel import KernelConnection, KernelDied

#: The kernel states the gateway announces on IOPub when a kernel process died: it is being
#: restarted by the gateway's own restarter, or it could not be restarted.
_DEATH_STATES = frozenset({"restarting", "dead"})

#: The fields of a kernel spec that the gateway's REST model carries under ``spec``.
_KERNEL_SPEC_FIELDS = ("argv", "display_name", "language", "interrupt_mode", "env", "metadata")


def is_gateway_kernel_manager(kernel_manager: Any) -> bool:
    """Whether the server's kernel manager runs its kernels on a gateway."""
    return isinstance(kernel_manager, GatewayMappingKernelManager)


def kernel_spec_from_model(model: dict[str, Any]) -> KernelSpec:
    """A KernelSpec from the REST model a gateway's kernel spec manager answers with.

    Locally ``get_kernel_spec`` gives a ``KernelSpec``; the gateway's gives the JSON model of
    ``/api/kernelspecs/{name}`` (``{"name", "spec": {...}, "resources"}``) instead.
    """
    spec = model.get("spec") or {}
    fields = {key: spec[key] for key in _KERNEL_SPEC_FIELDS if spec.get(key) is not None}
    return KernelSpec(name=str(model.get("name", "")), **fields)


def _retrieve_exception(future: asyncio.Future[None]) -> None:
    """Mark a failed write's exception as seen (the lost websocket is handled in _read)."""
    if not future.cancelled():
        future.exception()


class GatewayKernelWebsocket(ShellRequests, LoggingConfigurable):
    """A non-blocking client of one kernel on a gateway, over the gateway's kernel websocket.

    It has the part of jupyter_client's ``AsyncKernelClient`` API that
    :class:`~jupyter_exec_ext.kernel.KernelConnection` uses: ``execute``, ``kernel_info``,
    ``get_iopub_msg``, ``get_shell_msg`` and ``stop_channels``. It speaks the websocket's JSON
    protocol (the one every gateway version understands): each message is a JSON text with its
    ``channel``; messages with binary buffers come as binary frames.

    Configured next to ``GatewayClient`` (it is created with the GatewayClient as parent), e.g.
    ``--GatewayKernelWebsocket.ping_interval=20``.
    """

    ping_interval = Float(
        30.0,
        config=True,
        help="Seconds between websocket pings to the gateway. They keep proxies and load "
        "balancers from closing a quiet connection (a session whose code runs for minutes) and "
        "notice a dead one: without a pong within the same time the connection is closed and "
        "opened again. 0 turns pings off.",
    )

    rest_check_interval = Float(
        5.0,
        config=True,
        help="Seconds a call may wait without any message from its kernel before the gateway's "
        "REST API is asked whether the kernel still exists, and again every as many seconds "
        "while the silence lasts. A kernel culled or deleted on the gateway says nothing on "
        "the websocket: without this check its call would run into its timeout. 0 turns the "
        "check off.",
    )

    max_message_size = Integer(
        256 * 1024 * 1024,
        config=True,
        help="Largest kernel message, in bytes, accepted from the gateway. One print or one "
        "image is one message; a larger one closes the connection (tornado's default is only "
        "10 MiB, while a local kernel has no such limit).",
    )

    def __init__(self, kernel_id: str, **kwargs: Any) -> None:
        """A client of the gateway's kernel ``kernel_id``; :meth:`connect` opens it."""
        super().__init__(**kwargs)
        self.kernel_id = kernel_id
        # Builds the headers of our requests. Its id names this connection on the gateway,
        # which buffers the kernel's messages while the websocket is away and replays them when
        # a websocket with the same id comes back.
        self.session = Session()
        #: "restarting" or "dead" once the gateway announced that the kernel process died.
        self.kernel_state: str | None = None
        self._queues = {"shell": ChannelQueue(), "iopub": ChannelQueue()}
        self._websocket: WebSocketClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._stopped = False
        # Event-loop times of the last message from the gateway and of the last REST check.
        self._last_message = self._last_rest_check = 0.0

    @property
    def url(self) -> str:
        """The websocket URL of the kernel's channels on the gateway."""
        gateway = GatewayClient.instance()
        channels_url: str = url_path_join(
            gateway.ws_url or "", gateway.kernels_endpoint, url_escape(self.kernel_id), "channels"
        )
        return f"{channels_url}?session_id={url_escape(self.session.session)}"

    @property
    def connected(self) -> bool:
        """Whether the websocket is open."""
        return self._websocket is not None

    async def connect(self) -> None:
        """Open the websocket (again, after it was lost), unless it is open already.

        Raises ``KernelDied`` when the gateway no longer has the kernel, and
        ``web.HTTPError`` (as jupyter_server's own gateway requests do) on other failures.
        """
        async with self._connecting:
            if self._websocket is not None or self._stopped:
                return
            gateway = GatewayClient.instance()
            # The gateway's auth header, extra headers, cookies, TLS settings and timeouts, as
            # on every REST request jupyter_server sends it.
            connection_args: dict[str, Any] = gateway.load_connection_args()  # type: ignore[no-untyped-call]
            request = HTTPRequest(self.url, **connection_args)
            try:
                websocket = await websocket_connect(
                    request,
                    ping_interval=self.ping_interval or None,
                    max_message_size=self.max_message_size,
                )
            except HTTPClientError as e:
                if e.code == 404:
                    raise KernelDied(f"Kernel {self.kernel_id} is gone from the gateway") from e
                # 502, not the gateway's own status: a 401 or 403 here is about this server's
                # credentials for the gateway, not about the caller's (599: no answer at all).
                raise web.HTTPError(
                    503 if e.code == 599 else 502,
                    f"The gateway {gateway.url} refused the websocket of kernel "
                    f"{self.kernel_id}: {e}",
                ) from e
            except (OSError, TimeoutError) as e:
                raise web.HTTPError(
                    503,
                    f"Could not reach the gateway {gateway.url} for kernel {self.kernel_id}: {e}",
                ) from e
            if self._stopped:
                websocket.close()
                return
            self._tune_socket(websocket)
            self._websocket = websocket
            self._reader = asyncio.ensure_future(self._read(websocket))

    def rest_check_due(self) -> bool:
        """Whether the kernel has been silent for ``rest_check_interval`` since the last check.

        True once per interval of silence: the caller then asks the gateway's REST API.
        """
        if not self.rest_check_interval:
            return False
        now = asyncio.get_running_loop().time()
        if now - max(self._last_message, self._last_rest_check) < self.rest_check_interval:
            return False
        self._last_rest_check = now
        return True

    def _tune_socket(self, websocket: WebSocketClientConnection) -> None:
        """No waits for ACKs in either direction: TCP_NODELAY and quick ACKs."""
        stream = websocket.protocol.stream if websocket.protocol is not None else None
        if stream is None:
            return
        # Our requests go out at once, not held until the last one's ACK comes back.
        stream.set_nodelay(True)
        # The gateway's side sends with Nagle's algorithm on: after a small message it holds
        # the next until we ACK, and a delayed ACK costs ~40 ms per message. Quick ACKs avoid
        # that wait; Linux turns them off again after a while, so _read renews them.
        self._quick_ack(websocket)

    @staticmethod
    def _quick_ack(websocket: WebSocketClientConnection) -> None:
        """Ask the OS to ACK what arrives at once (Linux only; a no-op elsewhere)."""
        quickack = getattr(socket, "TCP_QUICKACK", None)
        protocol = websocket.protocol
        if quickack is None or protocol is None or protocol.stream is None:
            return
        sock = protocol.stream.socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)

    async def _read(self, websocket: WebSocketClientConnection) -> None:
        """File every message the gateway sends under its channel, until the websocket closes."""
        while True:
            raw = await websocket.read_message()
            if raw is None:
                break
            self._quick_ack(websocket)
            self._last_message = asyncio.get_running_loop().time()
            try:
                message = self._decode(raw)
            except (ValueError, KeyError, TypeError) as e:
                self.log.warning(
                    "Kernel %s: unreadable message from the gateway: %s", self.kernel_id, e
                )
                continue
            channel = message.pop("channel", None)
            if channel == "iopub" and self._announces_death(message):
                self.kernel_state = message["content"]["execution_state"]
                self.log.warning(
                    "Kernel %s: the gateway reports its process died (%s)",
                    self.kernel_id,
                    self.kernel_state,
                )
                self._queues["iopub"].put(message)
                for queue in self._queues.values():
                    queue.close()
                continue
            channel_queue = self._queues.get(channel or "")
            if channel_queue is not None:
                channel_queue.put(message)
        if self._websocket is websocket:
            self._websocket = None
            if not self._stopped:
                self.log.warning(
                    "Kernel %s: the gateway closed its websocket (%s %s)",
                    self.kernel_id,
                    websocket.close_code,
                    websocket.close_reason,
                )

    @staticmethod
    def _decode(raw: str | bytes) -> dict[str, Any]:
        """A message of the websocket's JSON protocol (binary when it has buffers)."""
        if isinstance(raw, bytes):
            message: dict[str, Any] = deserialize_binary_message(raw)  # type: ignore[no-untyped-call]
        else:
            message = json.loads(raw)
        if not isinstance(message, dict) or not isinstance(message.get("header"), dict):
            raise ValueError("not a kernel message")
        return message

    @staticmethod
    def _announces_death(message: dict[str, Any]) -> bool:
        """Whether this is the gateway's own status message for a kernel process that died.

        The gateway sends it without a parent; a kernel never publishes these two states.
        """
        return (
            message["header"].get("msg_type") == "status"
            and not message.get("parent_header")
            and message.get("content", {}).get("execution_state") in _DEATH_STATES
        )

    def _send_shell(self, msg_type: str, content: dict[str, Any]) -> str:
        """Send a request on the shell channel and return its msg_id."""
        message = self.session.msg(msg_type, content)
        # Without it the gateway guesses "shell" (and logs a warning for every message).
        message["channel"] = "shell"
        websocket = self._websocket
        if websocket is None:
            # The caller waits for a reply that will not come and checks is_alive, which
            # opens the websocket again.
            self.log.warning("Kernel %s: websocket closed, %s not sent", self.kernel_id, msg_type)
        else:
            try:
                sent = websocket.write_message(json.dumps(message, default=json_default))
            except WebSocketClosedError:
                self.log.warning(
                    "Kernel %s: websocket closed, %s not sent", self.kernel_id, msg_type
                )
            else:
                # A write that fails later (the connection dropped) shows up as a lost
                # websocket in _read; its exception is not logged a second time.
                sent.add_done_callback(_retrieve_exception)
        return str(message["header"]["msg_id"])

    async def get_iopub_msg(self, timeout: float | None = None) -> dict[str, Any]:
        """The next IOPub message; ``queue.Empty`` after ``timeout`` seconds."""
        return await self._queues["iopub"].get(timeout)

    async def get_shell_msg(self, timeout: float | None = None) -> dict[str, Any]:
        """The next shell reply; ``queue.Empty`` after ``timeout`` seconds."""
        return await self._queues["shell"].get(timeout)

    def stop_channels(self) -> None:
        """Close the websocket for good; waiting readers get ``Empty``."""
        self._stopped = True
        websocket, self._websocket = self._websocket, None
        if websocket is not None:
            websocket.close()
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        for queue in self._queues.values():
            queue.close()


class GatewayKernelConnection(KernelConnection):
    """A session's kernel on a gateway: REST for its lifecycle, the websocket for messages.

    Deaths are seen on the websocket, without polling the gateway: the gateway's restarter
    announces a dead kernel process with a ``restarting`` (or, when it gives up, ``dead``)
    status. The gateway's REST API is asked only when the websocket was lost, or when a call
    has waited ``rest_check_interval`` seconds without a message (a kernel culled or deleted
    on the gateway goes silent without a word).
    """

    async def _open_client(self) -> GatewayKernelWebsocket:
        """Open a websocket to the kernel on the gateway."""
        # The gateway, not this server, runs the kernel and its restarter: nothing to switch
        # off here (the restarter's announcements are how deaths are noticed).
        client = GatewayKernelWebsocket(
            self.kernel_id, parent=GatewayClient.instance(), log=self.log
        )
        await client.connect()
        return client

    async def is_alive(self) -> bool:
        """Whether the kernel is alive on the gateway (a lost websocket is opened again)."""
        if self.kernel_id not in self.kernel_manager:
            return False
        client: GatewayKernelWebsocket | None = self._client
        if client is not None:
            if client.kernel_state is not None:
                return False
            if client.connected:
                return True
        if not await self._gateway_reports_alive():
            return False
        if client is not None:
            try:
                await client.connect()
            except (KernelDied, web.HTTPError) as e:
                # The caller checks again on its next wait, and a call's own timeout still
                # interrupts and, if need be, restarts the kernel.
                self.log.warning("Kernel %s: could not reconnect: %s", self.kernel_id, e)
            else:
                self.log.info("Kernel %s: websocket to the gateway opened again", self.kernel_id)
        return True

    async def _alive_while_waiting(self) -> bool:
        """Also ask the gateway's REST API now and then while a call waits in silence."""
        if not await self.is_alive():
            return False
        client: GatewayKernelWebsocket | None = self._client
        if client is None or not client.connected or not client.rest_check_due():
            return True
        try:
            return await self._gateway_reports_alive()
        except web.HTTPError as e:
            # The websocket is still open: a gateway slow to answer REST is no reason to give
            # up on the call.
            self.log.warning("Kernel %s: the gateway did not answer: %s", self.kernel_id, e)
            return True

    async def _gateway_reports_alive(self) -> bool:
        """Ask the gateway's REST API about the kernel (only when there is no websocket).

        A gateway that cannot be asked raises ``web.HTTPError`` (503): the caller hears that
        the gateway is away, not that its kernel and state are lost.
        """
        model = await self._kernel.refresh_model()
        return bool(model) and model.get("execution_state") != "dead"

    async def restart(self, timeout: float = 60) -> None:
        """Restart the kernel on the gateway (a fresh process, same id) and reconnect.

        When the gateway's restarter has just restarted a dead kernel, its fresh kernel is
        used as it is: a second restart would race the one under way on the gateway.
        """
        client: GatewayKernelWebsocket | None = self._client
        restarted_by_gateway = client is not None and client.kernel_state == "restarting"
        self.close()
        if restarted_by_gateway:
            try:
                # The gateway accepts the websocket once its restart is done.
                await self.connect(timeout)
            except (KernelDied, TimeoutError, web.HTTPError) as e:
                self.log.warning(
                    "Kernel %s: the gateway's restart did not bring it back (%s); restarting it",
                    self.kernel_id,
                    e,
                )
                self.close()
            else:
                return
        gone = KernelDied(f"Kernel {self.kernel_id} is gone from the gateway")
        if self.kernel_id not in self.kernel_manager:
            raise gone
        try:
            await ensure_async(self.kernel_manager.restart_kernel(self.kernel_id, now=True))
        except web.HTTPError as e:
            # Culled or deleted on the gateway: a dead session, not a 404 for the caller's
            # request (which would read as "no such agent session").
            if e.status_code == 404:
                raise gone from e
            raise
        await self.connect(timeout)
