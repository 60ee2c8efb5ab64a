"""A benchmark-only server extension: collect garbage on request, so RSS is read after gc.

``benchmarks/run.py`` loads it (besides ``jupyter_exec_ext``) only into the server whose
memory per session it measures. It adds one route, ``POST /api/bench-probe/gc``, which runs
the garbage collector and answers with the server's resident set size; it does nothing
unless called.
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


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Tell jupyter_server that this module is an extension."""
    return [{"module": "bench_server_probe"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the probe's route under the server's base_url."""
    route = url_path_join(serverapp.base_url, "api/bench-probe/gc")
    serverapp.web_app.add_handlers(".*$", [(route, CollectGarbageHandler)])
