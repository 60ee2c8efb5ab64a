"""The kernel pool: sessions start on pre-started kernels, each used once, none left behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .conftest import Api

pytestmark = pytest.mark.parametrize(
    "agent_config", [{"kernel_pool": {"python3": 1, "no-such-kernel": 1}}]
)


async def wait_for_pool(manager: Any, count: int) -> set[str]:
    """The pooled kernel ids, once there are ``count`` of them."""
    # A real server runs the extensions' start hooks once its loop runs; the test server
    # of pytest-jupyter does not, so the test does it (start is idempotent).
    await manager.start()
    for _ in range(300):
        ids: set[str] = manager.pooled_kernel_ids()
        if len(ids) >= count:
            return ids
        await asyncio.sleep(0.05)
    raise AssertionError("the pool did not fill")


async def test_sessions_take_pooled_kernels_and_the_pool_refills(
    api: Api, manager: Any, jp_root_dir: Any
) -> None:
    [pooled] = await wait_for_pool(manager, 1)
    assert (await api.request("GET")).json == []  # pooled kernels are not sessions

    session = await api.create(name="pooled")
    assert session["kernel_id"] == pooled
    [refill] = await wait_for_pool(manager, 1)
    assert refill != pooled

    # The helper was loaded before the session existed; the session's own setup still holds.
    result = await api.execute(
        session["id"], "import os\nprint(os.getcwd())\nimport matplotlib.pyplot as plt\n"
        "plt.plot([1]); plt.gcf()"
    )
    assert result["output"].startswith(str(jp_root_dir / "agent-sessions" / "pooled") + "\n")
    assert [f["mime_type"] for f in result["files"]] == ["image/png"]


async def test_a_pooled_session_keeps_its_set_up_after_a_restart(
    api: Api, manager: Any, jp_root_dir: Any
) -> None:
    # A pooled kernel gets the session's folder and memory limit from the short set-up code;
    # its restart starts a fresh kernel, which loads the whole helper again.
    manager.kernel_memory_limit = 3_000_000_000
    await wait_for_pool(manager, 1)
    session = await api.create(name="restarted")
    code = (
        "import os, resource\n"
        "print(os.getcwd(), resource.getrlimit(resource.RLIMIT_DATA)[0])"
    )
    expected = f"{jp_root_dir / 'agent-sessions' / 'restarted'} 3000000000\n"
    assert (await api.execute(session["id"], code))["output"] == expected
    reply = await api.request("POST", session["id"], "restart")
    assert reply.status == 200
    assert (await api.execute(session["id"], code))["output"] == expected


async def test_a_pooled_kernel_serves_one_session_only(api: Api, manager: Any) -> None:
    await wait_for_pool(manager, 1)
    first = await api.create()
    await api.execute(first["id"], "leaked = 'secret'")
    await api.request("DELETE", first["id"])
    await wait_for_pool(manager, 1)
    second = await api.create()
    assert second["kernel_id"] != first["kernel_id"]
    result = await api.execute(second["id"], "'leaked' in dir()")
    assert result["output"] == "False\n"


async def test_pool_kernels_stop_with_the_server(manager: Any, jp_serverapp: Any) -> None:
    pooled = await wait_for_pool(manager, 1)
    await manager.shutdown()
    assert not pooled & set(jp_serverapp.kernel_manager.list_kernel_ids())
    assert manager.pooled_kernel_ids() == set()


async def test_unknown_kernel_names_are_not_pooled(manager: Any) -> None:
    await wait_for_pool(manager, 1)
    assert manager._pool.sizes == {"python3": 1}


async def test_a_pool_kernel_whose_set_up_fails_is_shut_down(
    manager: Any, jp_serverapp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool is not started here (no start hook ran), so every kernel is this test's.
    async def broken_set_up(self: Any, timeout: float) -> None:
        raise RuntimeError("the helper could not be sent")

    monkeypatch.setattr(manager.kernel_connection_class, "_wait_until_ready", broken_set_up)
    with pytest.raises(RuntimeError):
        await manager._start_pooled_kernel("python3")
    assert jp_serverapp.kernel_manager.list_kernel_ids() == []
