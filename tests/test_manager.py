"""AgentSessionManager called directly, on the kernels of a real server."""

from __future__ import annotations

from typing import Any

import pytest
from tornado import web

from jupyter_exec_ext.capture import OutputCapture
from jupyter_exec_ext.kernel import KernelConnection


async def test_create_execute_delete(manager: Any, jp_serverapp: Any) -> None:
    model = await manager.create_session(name="direct")
    assert model["status"] == "idle"
    result = await manager.execute(model["id"], "print('hi')")
    assert result["output"] == "hi\n"
    assert manager.get_session(model["id"])["execution_count"] == 1
    await manager.delete_session(model["id"])
    assert model["kernel_id"] not in jp_serverapp.kernel_manager.list_kernel_ids()
    with pytest.raises(web.HTTPError) as info:
        await manager.delete_session(model["id"])
    assert info.value.status_code == 404


async def test_files_belong_to_their_session(manager: Any) -> None:
    owner = await manager.create_session()
    other = await manager.create_session()
    result = await manager.execute(
        owner["id"], "from IPython.display import HTML\nHTML('<b>mine</b>')"
    )
    [stored] = result["files"]
    assert manager.get_file(owner["id"], stored["id"]).mime_type == "text/html"
    with pytest.raises(web.HTTPError) as info:
        manager.get_file(other["id"], stored["id"])
    assert info.value.status_code == 404


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 10**9])
async def test_bad_timeouts_are_400(manager: Any, timeout: float) -> None:
    session = await manager.create_session()
    with pytest.raises(web.HTTPError) as info:
        await manager.execute(session["id"], "1", timeout=timeout)
    assert info.value.status_code == 400


async def test_shutdown_stops_every_kernel_and_removes_files(
    manager: Any, jp_serverapp: Any
) -> None:
    sessions = [await manager.create_session() for _ in range(2)]
    result = await manager.execute(sessions[0]["id"], "from IPython.display import HTML\nHTML('x')")
    path = manager.get_file(sessions[0]["id"], result["files"][0]["id"]).path
    await manager.shutdown()
    assert manager.list_sessions() == []
    kernels = set(jp_serverapp.kernel_manager.list_kernel_ids())
    assert not kernels & {session["kernel_id"] for session in sessions}
    assert not path.exists()


async def test_set_up_code_runs_before_the_first_call(manager: Any, jp_serverapp: Any) -> None:
    connection = await KernelConnection.start(
        jp_serverapp.kernel_manager, "python3", manager.log, setup_code="ready = 'set up'"
    )
    try:
        capture = OutputCapture(None)
        outcome = await connection.execute("print(ready)", capture, timeout=20)
        assert outcome.status == "ok"
        assert capture.result("ok", outcome.execution_count)["output"] == "set up\n"
        # Silent: the set-up took no execution count.
        assert outcome.execution_count == 1
    finally:
        await connection.discard()


async def test_a_failing_set_up_is_logged_and_the_kernel_still_runs(
    manager: Any, jp_serverapp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    connection = await KernelConnection.start(
        jp_serverapp.kernel_manager,
        "python3",
        manager.log,
        setup_code="raise ValueError('no helper today')",
    )
    try:
        assert "ValueError: no helper today" in caplog.text
        capture = OutputCapture(None)
        outcome = await connection.execute("print(1 + 1)", capture, timeout=20)
        assert capture.result(outcome.status, outcome.execution_count)["output"] == "2\n"
    finally:
        await connection.discard()
