"""Limits: each configurable, each with a clear error, none harming other sessions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .conftest import Api


@pytest.mark.parametrize("agent_config", [{"max_sessions": 2}])
async def test_too_many_sessions_is_429(api: Api) -> None:
    first = await api.create()
    await api.create()
    reply = await api.request("POST", body={})
    assert reply.status == 429
    assert "at most 2" in reply.json["message"]
    await api.request("DELETE", first["id"])
    assert (await api.request("POST", body={})).status == 201


@pytest.mark.parametrize("agent_config", [{"max_code_chars": 100}])
async def test_too_much_code_is_413(api: Api) -> None:
    session = await api.create()
    reply = await api.request("POST", session["id"], "execute", body={"code": "#" * 101})
    assert reply.status == 413
    assert "at most 100" in reply.json["message"]
    assert (await api.execute(session["id"], "1 + 1"))["output"] == "2\n"


@pytest.mark.parametrize("agent_config", [{"max_session_file_bytes": 30_000}])
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


@pytest.mark.parametrize("agent_config", [{"kernel_memory_limit": 1_500_000_000}])
async def test_memory_limit_gives_a_clear_result_and_a_fresh_kernel(api: Api) -> None:
    session, bystander = await api.create(), await api.create()
    await api.execute(bystander["id"], "kept = 1")
    await api.execute(session["id"], "lost = 1")
    result = await api.execute(session["id"], "hog = bytearray(3_000_000_000)")
    assert result["status"] == "error"
    assert "Memory limit reached" in result["output"]
    assert (await api.execute(session["id"], "'lost' in dir()"))["output"] == "False\n"
    assert (await api.execute(bystander["id"], "kept"))["output"] == "1\n"


@pytest.mark.parametrize("agent_config", [{"cull_idle_timeout": 1.5, "cull_interval": 0.2}])
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
