"""A pool of pre-started kernels, so a new session does not wait for a kernel to boot."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .kernel import KernelConnection

#: Seconds to wait before trying again after a pool kernel failed to start.
_RETRY_DELAY = 5.0


class KernelPool:
    """Fresh kernels of given names, started ahead of time and refilled in the background.

    A pooled kernel has the in-kernel helper loaded already. Each kernel is handed out once:
    a session's kernel never goes back to the pool, so no state can leak between sessions.
    """

    def __init__(
        self,
        sizes: dict[str, int],
        start_kernel: Callable[[str], Awaitable[KernelConnection]],
        log: logging.Logger,
    ) -> None:
        """Keep ``sizes[name]`` kernels ready per kernel name, started by ``start_kernel``."""
        self.sizes = {name: size for name, size in sizes.items() if size > 0}
        self._start_kernel = start_kernel
        self.log = log
        self._ready: dict[str, list[KernelConnection]] = {name: [] for name in self.sizes}
        self._starting: dict[str, int] = dict.fromkeys(self.sizes, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False

    def ready_count(self, kernel_name: str) -> int:
        """How many kernels of that name are ready now."""
        return len(self._ready.get(kernel_name, []))

    def kernel_ids(self) -> set[str]:
        """Ids of the kernels the pool holds."""
        return {c.kernel_id for ready in self._ready.values() for c in ready}

    def fill_later(self, delay: float) -> None:
        """:meth:`fill` after ``delay`` seconds (at once for 0); a fill already due stays."""
        if delay <= 0:
            self.fill()
        elif self._retry is None and not self._closed:
            self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def fill(self) -> None:
        """Start kernels in the background until every kernel name has its count."""
        if self._closed:
            return
        for name, size in self.sizes.items():
            missing = size - len(self._ready[name]) - self._starting[name]
            for _ in range(missing):
                self._starting[name] += 1
                task = asyncio.ensure_future(self._start_one(name))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def take(self, kernel_name: str) -> KernelConnection | None:
        """A ready kernel of that name, or None; :meth:`fill` refills the pool behind it."""
        ready = self._ready.get(kernel_name)
        while ready:
            connection = ready.pop(0)
            if await connection.is_alive():
                return connection
            self.log.warning("Pooled kernel %s had died; discarding it", connection.kernel_id)
            # Its manager (or a gateway) may have restarted it: make sure it is gone.
            await connection.discard()
        return None

    def put_back(self, kernel_name: str, connection: KernelConnection) -> None:
        """Return a kernel that :meth:`take` gave out but that was not used, first in line."""
        if self._closed or kernel_name not in self._ready:
            task = asyncio.ensure_future(connection.discard())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._ready[kernel_name].insert(0, connection)

    async def _start_one(self, kernel_name: str) -> None:
        try:
            connection = await self._start_kernel(kernel_name)
        except Exception:
            self._starting[kernel_name] -= 1
            if not self._closed:
                self.log.exception("Could not start a %s kernel for the pool", kernel_name)
                self._retry_later()
            return
        self._starting[kernel_name] -= 1
        if self._closed:
            await connection.discard()
            return
        self._ready[kernel_name].append(connection)

    def _retry_later(self) -> None:
        """Fill the pool again after a pause, so a failing kernel does not start in a loop."""
        if self._retry is None:
            loop = asyncio.get_running_loop()
            self._retry = loop.call_later(_RETRY_DELAY, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.fill()

    async def shutdown(self) -> None:
        """Stop refilling and shut every pooled kernel down, the ones still starting too."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        # Kernels still starting are waited for, not cancelled: a start cancelled half-way
        # leaves a kernel process that nobody owns. Each one sees the pool closed and stops.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        connections = [c for ready in self._ready.values() for c in ready]
        for ready in self._ready.values():
            ready.clear()
        await asyncio.gather(
            *(connection.discard() for connection in connections), return_exceptions=True
        )
