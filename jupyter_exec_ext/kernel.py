"""Run code on one kernel of the server's kernel manager, server-side, over the kernel protocol."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from queue import Empty
from typing import Any

from jupyter_core.utils import ensure_async

import kernel_helper

from .capture import OutputCapture
from .channels import LocalKernelChannels

#: How often a waiting execution checks that the kernel process is still alive, in seconds.
#: Only executions that are waiting poll, so an idle server does no work at all.
LIVENESS_INTERVAL = 0.5
#: How often a starting kernel is asked for kernel_info until an answer shows on IOPub.
_KERNEL_INFO_INTERVAL = 0.1


class KernelDied(Exception):
    """The kernel process went away."""


@dataclass
class Outcome:
    """How an execution ended, as seen on the kernel protocol."""

    status: str  # "ok" | "error" | "timeout" | "dead"
    execution_count: int | None = None
    #: The kernel did not stop within the grace period after a timeout's interrupt.
    unresponsive: bool = False
    #: The code asked the kernel to exit (``exit()``, ``quit()``): it is shutting down.
    exited: bool = False


class KernelConnection:
    """A server-side client of one kernel: start, execute with a deadline, interrupt, restart.

    The kernel is owned by jupyter_server's kernel manager, so it shows in ``/api/kernels`` and
    JupyterLab can connect to it too. Its automatic restarter is switched off: the session
    notices deaths itself and restarts the kernel, which keeps two restarts from racing.
    """

    def __init__(
        self,
        kernel_manager: Any,
        kernel_id: str,
        log: logging.Logger,
        setup_code: str | None = None,
    ) -> None:
        """Talk to the kernel ``kernel_id`` of ``kernel_manager`` (a MappingKernelManager)."""
        self.kernel_manager = kernel_manager
        self.kernel_id = kernel_id
        self.log = log
        #: Run silently each time the kernel (re)starts, before any call: the kernel helper.
        self.setup_code = setup_code
        self._client: Any = None
        #: A cancelled or timed-out call left the kernel busy: restart it before the next.
        self.unresponsive = False

    @classmethod
    async def start(
        cls,
        kernel_manager: Any,
        kernel_name: str,
        log: logging.Logger,
        *,
        timeout: float = 60,
        setup_code: str | None = None,
        **kwargs: Any,
    ) -> KernelConnection:
        """Start a new kernel (``kwargs`` go to ``start_kernel``), connect and set it up."""
        kernel_id = await ensure_async(
            kernel_manager.start_kernel(kernel_name=kernel_name, **kwargs)
        )
        connection = cls(kernel_manager, kernel_id, log, setup_code)
        try:
            await connection.connect(timeout)
        except BaseException:
            await connection.discard()
            raise
        return connection

    @property
    def _kernel(self) -> Any:
        return self.kernel_manager.get_kernel(self.kernel_id)

    async def connect(self, timeout: float = 60) -> None:
        """Open channels, wait until the kernel answers on shell and IOPub, run ``setup_code``."""
        self.close()
        self._client = await self._open_client()
        await self._wait_until_ready(timeout)

    async def _open_client(self) -> Any:
        """A started client of the kernel with the API of :class:`LocalKernelChannels`.

        Subclasses for remote kernels return their own.
        """
        kernel = self._kernel
        # In this order: stop_restarter does nothing once autorestart is off, and a restarter
        # left running would race the session's own restart and orphan a kernel process.
        kernel.stop_restarter()
        kernel.autorestart = False
        return LocalKernelChannels(self.kernel_manager, self.kernel_id)

    async def _wait_until_ready(self, timeout: float) -> None:
        """Wait until IOPub is subscribed and the kernel answers, running ``setup_code``.

        ``setup_code`` goes out right behind the first kernel_info request, so the kernel runs
        it as soon as it is up, while our IOPub subscription may still be on its way. Its
        outcome is read from its shell reply, which, unlike IOPub, loses nothing.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        asked = {self._client.kernel_info()}
        setup_id = None
        if self.setup_code is not None:
            setup_id = self._client.execute(
                self.setup_code,
                silent=True,
                store_history=False,
                allow_stdin=False,
                stop_on_error=True,
            )
        await self._wait_for_iopub(asked, deadline)
        # Shell replies come in the order of the requests: the set-up's follows the first.
        reply = await self._wait_for_reply({setup_id} if setup_id else asked, deadline)
        if setup_id is not None and reply.get("status") != "ok":
            capture = OutputCapture(None)
            capture.handle("error", reply)
            self._setup_failed(capture.result("error", None)["output"])

    def _setup_failed(self, output: str) -> None:
        # The kernel still runs code; it only lacks the helper's conveniences.
        self.log.warning("Kernel %s: the kernel helper failed to load: %s", self.kernel_id, output)

    async def _wait_for_iopub(self, asked: set[str], deadline: float) -> None:
        """Ask kernel_info (adding to ``asked``) until IOPub proves that it is subscribed.

        IOPub is a PUB/SUB socket: messages published before our subscription reached the
        kernel are lost, and only a message we see proves that the subscription is in place.
        ipykernel >= 7 greets each new subscriber with ``iopub_welcome``; with any kernel, the
        answer to a request will do. A kernel answers the requests queued while it booted as
        soon as it is up, often before ZMQ (which retries a refused connection every 100 ms)
        has connected our subscription, so those answers can be lost; asking again every
        ``_KERNEL_INFO_INTERVAL`` seconds bounds what that costs.
        """
        loop = asyncio.get_running_loop()
        while True:
            attempt_end = loop.time() + _KERNEL_INFO_INTERVAL
            while (remaining := attempt_end - loop.time()) > 0:
                try:
                    msg = await self._client.get_iopub_msg(timeout=remaining)
                except Empty:
                    break
                if msg["header"]["msg_type"] == "iopub_welcome":
                    return
                if msg["parent_header"].get("msg_id") in asked:
                    return
            await self._check_starting(deadline)
            asked.add(self._client.kernel_info())

    async def _wait_for_reply(self, msg_ids: set[str], deadline: float) -> dict[str, Any]:
        """The content of the shell reply to one of ``msg_ids``, checking the kernel lives."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = max(deadline - loop.time(), 0)
            reply = await self._drain_shell(msg_ids, min(remaining, LIVENESS_INTERVAL))
            if reply is not None:
                return reply
            await self._check_starting(deadline)

    async def _check_starting(self, deadline: float) -> None:
        """Raise when a starting kernel died, or has not answered by the loop time ``deadline``."""
        if not await self.is_alive():
            raise KernelDied(f"Kernel {self.kernel_id} died while starting")
        if asyncio.get_running_loop().time() >= deadline:
            raise TimeoutError(f"Kernel {self.kernel_id} did not answer in time")

    async def _drain_shell(
        self, msg_ids: Collection[str], timeout: float = 5
    ) -> dict[str, Any] | None:
        """Read shell replies until one to a request of ``msg_ids``; others are dropped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                reply = await self._client.get_shell_msg(timeout=remaining)
            except Empty:
                return None
            if reply["parent_header"].get("msg_id") in msg_ids:
                return dict(reply["content"])
        return None

    async def execute(
        self,
        code: str,
        capture: OutputCapture,
        timeout: float,
        *,
        interrupt_grace: float = 3.0,
        silent: bool = False,
    ) -> Outcome:
        """Run ``code``, feeding IOPub output to ``capture``, for at most ``timeout`` seconds.

        When the deadline passes the kernel is interrupted; its output up to then is kept
        and the call ends once the kernel is idle again, or after ``interrupt_grace``
        seconds with ``unresponsive`` set if the interrupt did not take.

        Cancelling the call (its client went away) interrupts the kernel the same way and
        waits for it to be idle before the cancellation goes on, so the next call of the
        session starts on a kernel that is ready.
        """
        if self._client is None:
            # The last restart failed (the kernel is gone): there is nothing to run on.
            return Outcome("dead")
        loop = asyncio.get_running_loop()
        msg_id = self._client.execute(
            code, silent=silent, store_history=not silent, allow_stdin=False, stop_on_error=True
        )
        deadline = loop.time() + timeout
        timed_out = cancelled = False
        execution_count: int | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if timed_out or cancelled:
                    self.unresponsive = True
                    if cancelled:
                        raise asyncio.CancelledError
                    return Outcome("timeout", unresponsive=True)
                timed_out = True
                await self.interrupt()
                deadline = loop.time() + interrupt_grace
                continue
            try:
                msg = await self._client.get_iopub_msg(timeout=min(remaining, LIVENESS_INTERVAL))
            except Empty:
                if not await self._alive_while_waiting():
                    if cancelled:
                        raise asyncio.CancelledError from None
                    return Outcome("dead")
                continue
            except asyncio.CancelledError:
                if cancelled or timed_out:
                    raise
                cancelled = True
                await self.interrupt()
                deadline = loop.time() + interrupt_grace
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msg_type = msg["header"]["msg_type"]
            content = msg["content"]
            if msg_type == "status" and content.get("execution_state") == "idle":
                if cancelled:
                    await self._drain_shell((msg_id,))
                    raise asyncio.CancelledError
                break
            if msg_type == "execute_input":
                execution_count = content.get("execution_count")
            capture.handle(msg_type, content, msg.get("metadata"))
        reply = await self._drain_shell((msg_id,)) or {}
        execution_count = reply.get("execution_count", execution_count)
        exited = False
        for payload in reply.get("payload", []):
            # The pager (``obj?``, ``%pinfo``) answers in the reply, not on IOPub.
            if payload.get("source") == "page":
                capture.add_data("display", payload.get("data", {}))
            # ``exit()`` asks the frontend to shut the kernel down, and the kernel stops.
            elif payload.get("source") == "ask_exit" and not payload.get("keepkernel"):
                exited = True
        if timed_out:
            return Outcome("timeout", execution_count)
        failed = capture.error is not None or reply.get("status", "ok") != "ok"
        return Outcome("error" if failed else "ok", execution_count, exited=exited)

    async def set_up(
        self, setup_code: str, *, run_now: str | None = None, timeout: float = 60
    ) -> None:
        """Run ``setup_code`` after every restart from now on, and ``run_now`` (by default
        ``setup_code``) at once: for a kernel started with other set-up code, like a pooled one.
        """
        self.setup_code = setup_code
        capture = OutputCapture(None)
        outcome = await self.execute(run_now or setup_code, capture, timeout, silent=True)
        if outcome.status != "ok":
            self._setup_failed(capture.result(outcome.status, None)["output"])

    async def preload(self, modules: list[str], timeout: float) -> None:
        """Import ``modules`` silently (into ``sys.modules``, no names bound); a module that
        fails is logged: the kernel works without it."""
        capture = OutputCapture(None)
        outcome = await self.execute(
            kernel_helper.preload_code(modules), capture, timeout, silent=True
        )
        if outcome.status != "ok":
            result = capture.result(outcome.status, None)
            # The helper's message names each module and its error; its traceback, only itself.
            error = result.get("error") or {}
            reason = error.get("evalue") or result["output"] or outcome.status
            self.log.warning("Kernel %s: preloading modules failed: %s", self.kernel_id, reason)

    def update_env(self, env: dict[str, str]) -> None:
        """Add ``env`` to the environment the kernel's process gets at its next restart.

        Kernel managers without ``update_env`` (jupyter_client < 8.5) keep theirs; the
        session's set-up code still sets the variables after each restart.
        """
        update = getattr(self._kernel, "update_env", None)
        if update is not None:
            update(env=env)

    async def interrupt(self) -> None:
        """Interrupt the kernel (SIGINT, or an interrupt request for message-mode kernels)."""
        await ensure_async(self.kernel_manager.interrupt_kernel(self.kernel_id))

    @property
    def provisioner(self) -> Any:
        """The provisioner of the kernel, None where there is none (a gateway's kernels)."""
        try:
            return getattr(self._kernel, "provisioner", None)
        except KeyError:  # the kernel manager forgot the kernel: it was shut down
            return None

    def memory_limit_hit(self) -> bool:
        """Whether the kernel's sandbox killed a process of it for its memory limit."""
        check = getattr(self.provisioner, "memory_limit_hit", None)
        return bool(check()) if callable(check) else False

    async def _alive_while_waiting(self) -> bool:
        """Whether the kernel is alive, asked while a call waits and no message comes.

        Subclasses for remote kernels may look harder here than in :meth:`is_alive`, which
        also runs before every call.
        """
        return await self.is_alive()

    async def is_alive(self) -> bool:
        """Whether the kernel process is still running."""
        if self.kernel_id not in self.kernel_manager:
            return False
        return bool(await ensure_async(self._kernel.is_alive()))

    async def restart(self, timeout: float = 60) -> None:
        """Restart the kernel (a fresh process, same id) and reconnect."""
        self.close()
        await ensure_async(self.kernel_manager.restart_kernel(self.kernel_id, now=True))
        await self.connect(timeout)

    def close(self) -> None:
        """Close our channels; the kernel keeps running."""
        if self._client is not None:
            self._client.stop_channels()
            self._client = None

    async def shutdown_kernel(self) -> None:
        """Shut the kernel down; our channels stay open until :meth:`close`."""
        if self.kernel_id in self.kernel_manager:
            await ensure_async(self.kernel_manager.shutdown_kernel(self.kernel_id, now=True))

    async def discard(self) -> None:
        """Close our channels and shut the kernel down: for a kernel no session will use."""
        self.close()
        await self.shutdown_kernel()
