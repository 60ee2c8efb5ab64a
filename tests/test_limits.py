"""Limits: each configurable, each with a clear error, none harming other sessions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from .conftest import Api


@pytest.mark.parametrize("agent_config", [{"max_sessions": 2}], indirect=True)
async def test_too_many_sessions_is_429(api: Api) -> None:
    first = await api.create()
    await api.create()
    reply = await api.request("POST", body={})
    assert reply.status == 429
    assert "at most 2" in reply.json["message"]
    await api.request("DELETE", first["id"])
    assert (await api.request("POST", body={})).status == 201


@pytest.mark.parametrize("agent_config", [{"max_code_chars": 100}], indirect=True)
async def test_too_much_code_is_413(api: Api) -> None:
    session = await api.create()
    reply = await api.request("POST", session["id"], "execute", body={"code": "#" * 101})
    assert reply.status == 413
    assert "at most 100" in reply.json["message"]
    assert (await api.execute(session["id"], "1 + 1"))["output"] == "2\n"


@pytest.mark.parametrize("agent_config", [{"max_session_file_bytes": 30_000}], indirect=True)
async def test_session_files_are_capped(api: Api) -> None:
    session = await api.create()
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"
    first = await api.execute(session["id"], code)
    assert len(first["files"]) == 1
    second = await api.execute(session["id"], code)
    assert second["status"] == "ok"
    assert second["files"] == []
    assert "not kept" in second["output"]
    assert "limit of 30000 bytes" in second["output"]


def _bytes_in(folder: Path) -> int:
    total = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # a file deleted meanwhile
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def agent_config(request: pytest.FixtureRequest, store_dir: Path) -> dict[str, Any]:
    """The test's parameters, with the captured files in a folder the test can watch."""
    return {**getattr(request, "param", {}), "output_store_dir": str(store_dir)}


@pytest.mark.slow
@pytest.mark.parametrize("agent_config", [{"max_session_file_bytes": 1_000_000}], indirect=True)
async def test_the_byte_cap_holds_while_a_cell_prints(api: Api, store_dir: Path) -> None:
    session = await api.create()
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _bytes_in(store_dir))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = await api.execute(
            session["id"], "import sys\nfor _ in range(50):\n    sys.stdout.write('x' * 1_000_000)"
        )
    finally:
        done.set()
        watcher.join()
    assert peak <= 1_000_000, peak
    assert result["truncated"] is True
    assert "only its first 1000000 characters are in file" in result["output"]
    assert "limit of 1000000 bytes" in result["output"]
    [full] = result["files"]
    assert full["size"] == 1_000_000
    [marker] = [item for item in result["outputs"] if item["type"] == "truncated"]
    assert marker["file"] == full["id"]
    assert marker["file_complete"] is False
    # The cap is full: the next cut output keeps no file and says so.
    again = await api.execute(session["id"], "print('y' * 200_000)")
    assert "the whole output was not kept" in again["output"]
    assert again["files"] == []
    assert _bytes_in(store_dir) <= 1_000_000


@pytest.mark.parametrize(
    "agent_config", [{"kernel_memory_limit": 1_500_000_000}], indirect=True
)
async def test_memory_limit_gives_a_clear_result_and_a_fresh_kernel(api: Api) -> None:
    session, bystander = await api.create(), await api.create()
    await api.execute(bystander["id"], "kept = 1")
    await api.execute(session["id"], "lost = 1")
    result = await api.execute(session["id"], "hog = bytearray(3_000_000_000)")
    assert result["status"] == "error"
    assert "Memory limit reached" in result["output"]
    assert (await api.execute(session["id"], "'lost' in dir()"))["output"] == "False\n"
    assert (await api.execute(bystander["id"], "kept"))["output"] == "1\n"


@pytest.mark.parametrize(
    "agent_config", [{"cull_idle_timeout": 1.5, "cull_interval": 0.2}], indirect=True
)
async def test_idle_sessions_are_culled_but_busy_ones_are_not(api: Api, manager: Any) -> None:
    await manager.start()
    idle = await api.create()
    busy = await api.create()
    running = asyncio.ensure_future(api.execute(busy["id"], "import time; time.sleep(3); 'done'"))
    # Wait on states, not on the clock: the machine may be slow, the culler is not.
    while (await api.request("GET", busy["id"])).json["status"] != "busy":
        await asyncio.sleep(0.05)
    while (await api.request("GET", idle["id"])).status != 404:
        await asyncio.sleep(0.05)
    assert (await api.request("GET", busy["id"])).status == 200
    assert (await running)["output"] == "'done'\n"
