"""A benchmark-only server extension: what the benchmark must read from inside the server.

``benchmarks/run.py`` loads it besides ``jupyter_exec_ext``. Two routes, which do nothing
unless called: ``POST /api/bench-probe/gc`` runs the garbage collector and answers with the
server's resident set size (memory per session is read after gc); ``GET
/api/bench-probe/pool`` answers how many pooled kernels are ready (the kernels API cannot
tell: a kernel's execution_state stays "starting" when the server's activity watcher
subscribed after the kernel's first status messages).
"""

from __future__ import annotations

import gc
import json
import os
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web


def resident_set_size() -> int:
    """This process's resident set size in bytes, from ``/proc/self/statm``."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class CollectGarbageHandler(APIHandler):
    """``POST /api/bench-probe/gc``: a full collection, then the RSS."""

    @web.authenticated
    def post(self) -> None:
        """Collect all generations (three passes free chains of cycles) and report the RSS."""
        collected = sum(gc.collect() for _ in range(3))
        self.finish(json.dumps({"collected": collected, "rss": resident_set_size()}))


class PoolHandler(APIHandler):
    """``GET /api/bench-probe/pool``: how many kernels the agent-session pool holds ready."""

    @web.authenticated
    def get(self) -> None:
        """The number of ready pooled kernels."""
        manager = self.settings["agent_session_manager"]
        self.finish(json.dumps({"ready": len(manager.pooled_kernel_ids())}))


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Tell jupyter_server that this module is an extension."""
    return [{"module": "bench_server_probe"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the probe's route under the server's base_url."""
    routes = [
        (url_path_join(serverapp.base_url, "api/bench-probe/gc"), CollectGarbageHandler),
        (url_path_join(serverapp.base_url, "api/bench-probe/pool"), PoolHandler),
    ]
    serverapp.web_app.add_handlers(".*$", routes)
