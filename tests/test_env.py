"""A session's environment variables: in the kernel, kept, never shown, checked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from .conftest import Api

ENV = {"AGENT_API_KEY": "sk-very-secret-value", "SETTING": "a=b c\nd", "EMPTY": ""}
READ_ENV = f"import os, json\nprint(json.dumps({{k: os.environ.get(k) for k in {sorted(ENV)!r}}}))"


async def kernel_env(api: Api, session_id: str) -> dict[str, Any]:
    result = await api.execute(session_id, READ_ENV)
    assert result["status"] == "ok", result
    env: dict[str, Any] = json.loads(result["output"])
    return env


async def started_with(api: Api, session_id: str) -> dict[str, str]:
    """The session's variables in the environment the kernel process started with."""
    result = await api.execute(
        session_id,
        "import json\nraw = open('/proc/self/environ', 'rb').read().split(b'\\0')\n"
        "pairs = dict(p.decode().split('=', 1) for p in raw if b'=' in p)\n"
        f"print(json.dumps({{k: v for k, v in pairs.items() if k in {sorted(ENV)!r}}}))",
    )
    assert result["status"] == "ok", result
    found: dict[str, str] = json.loads(result["output"])
    return found


async def test_env_reaches_the_kernel_and_stays(api: Api) -> None:
    session = await api.create(env=ENV)
    sid = session["id"]
    assert await kernel_env(api, sid) == ENV
    # The process started with it (/proc shows the environment a process started with), and
    # processes the code starts get it too.
    assert await started_with(api, sid) == ENV
    result = await api.execute(sid, "!echo $AGENT_API_KEY")
    assert result["output"].strip() == ENV["AGENT_API_KEY"]

    restarted = await api.request("POST", sid, "restart")
    assert restarted.status == 200
    assert await kernel_env(api, sid) == ENV

    died = await api.execute(sid, "import os\nos._exit(1)")
    assert died["status"] == "dead"
    assert await kernel_env(api, sid) == ENV
    assert await started_with(api, sid) == ENV


async def test_values_are_never_shown(api: Api) -> None:
    session = await api.create(env=ENV)
    assert session["env_keys"] == sorted(ENV)
    for reply in (
        await api.request("GET", session["id"]),
        await api.request("GET"),
    ):
        assert reply.status == 200
        assert b"sk-very-secret-value" not in reply.body
    assert (await api.request("GET", session["id"])).json["env_keys"] == sorted(ENV)


async def test_other_sessions_do_not_see_it(api: Api) -> None:
    await api.create(env=ENV)
    other = await api.create()
    assert other["env_keys"] == []
    assert await kernel_env(api, other["id"]) == dict.fromkeys(ENV)


@pytest.mark.parametrize("agent_config", [{"kernel_pool": {"python3": 1}}])
async def test_a_pooled_kernel_gets_the_env_before_the_first_call(
    api: Api, manager: Any
) -> None:
    await _pool_ready(manager)
    pooled = manager.pooled_kernel_ids()
    session = await api.create(env=ENV)
    assert session["kernel_id"] in pooled  # taken from the pool, not started cold
    assert await kernel_env(api, session["id"]) == ENV
    result = await api.execute(
        session["id"],
        "import subprocess\nprint(subprocess.run(['sh', '-c', 'printf %s \"$SETTING\"'], "
        "capture_output=True, text=True).stdout, end='')",
    )
    assert result["output"] == ENV["SETTING"]
    # The pooled process started without them; a restart starts one with them.
    assert await started_with(api, session["id"]) == {}
    await api.request("POST", session["id"], "restart")
    assert await started_with(api, session["id"]) == ENV
    assert await kernel_env(api, session["id"]) == ENV

    await _pool_ready(manager)
    pooled = manager.pooled_kernel_ids()
    # Variables the interpreter reads at start need a kernel started with them.
    cold = await api.create(env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert cold["kernel_id"] not in pooled
    result = await api.execute(cold["id"], "import sys\nprint(sys.flags.dont_write_bytecode)")
    assert result["output"] == "1\n"


async def _pool_ready(manager: Any) -> None:
    # pytest-jupyter's server does not run the extensions' start hooks: start the pool here.
    await manager.start()
    for _ in range(600):
        if manager.pooled_kernel_ids():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the pool never filled")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"1ABC": "x"}, "1ABC"),
        ({"A-B": "x"}, "A-B"),
        ({"": "x"}, "''"),
        ({"GOOD": "x", "BAD": 1}, "env.BAD"),
        ({"LIST": ["x"]}, "env.LIST"),
        ({"NUL": "a\u0000b"}, "env.NUL"),
        ({"BIG": "x" * 70_000}, "env.BIG"),
    ],
)
async def test_bad_env_is_400_naming_the_variable(
    api: Api, env: dict[str, Any], named: str
) -> None:
    reply = await api.request("POST", body={"env": env})
    assert reply.status == 400, reply.body
    assert named in reply.json["message"]
    assert (await api.request("GET")).json == []


@pytest.mark.parametrize("agent_config", [{"max_env_vars": 2}])
async def test_too_many_variables_is_400(api: Api) -> None:
    reply = await api.request("POST", body={"env": {"A": "1", "B": "2", "C": "3"}})
    assert reply.status == 400
    assert "at most 2" in reply.json["message"]
    reply = await api.request("POST", body={"env": "A=1"})
    assert reply.status == 400
    assert "env" in reply.json["message"]
