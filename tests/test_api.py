"""The REST API through a real jupyter_server: routes, models, authentication, bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jupyter_exec_ext.spec import validation_error

from .conftest import Api


def assert_matches(schema_name: str, instance: Any) -> None:
    """The instance follows the schema of rest-api.yml."""
    problem = validation_error(schema_name, instance)
    assert problem is None, f"{schema_name}: {problem}\n{instance}"


async def test_session_lifecycle(api: Api, jp_base_url: str) -> None:
    reply = await api.request("POST", body={"name": "analyst"})
    assert reply.status == 201
    model = reply.json
    assert_matches("Session", model)
    assert model["name"] == "analyst"
    assert model["kernel_name"] == "python3"
    assert model["status"] == "idle"
    assert model["execution_count"] == 0
    assert reply.headers["Location"] == f"{jp_base_url}api/agent-sessions/{model['id']}"

    listed = await api.request("GET")
    assert listed.status == 200
    assert [session["id"] for session in listed.json] == [model["id"]]

    got = await api.request("GET", model["id"])
    assert got.status == 200
    assert got.json["kernel_id"] == model["kernel_id"]

    await api.execute(model["id"], "x = 1")
    got = await api.request("GET", model["id"])
    assert got.json["execution_count"] == 1
    assert got.json["last_activity"] >= model["last_activity"]

    deleted = await api.request("DELETE", model["id"])
    assert deleted.status == 204
    assert (await api.request("GET", model["id"])).status == 404
    assert (await api.request("GET")).json == []


async def test_delete_shuts_the_kernel_down(api: Api, jp_serverapp: Any) -> None:
    model = await api.create()
    kernel_manager = jp_serverapp.kernel_manager
    assert model["kernel_id"] in kernel_manager.list_kernel_ids()
    await api.request("DELETE", model["id"])
    assert model["kernel_id"] not in kernel_manager.list_kernel_ids()


async def test_session_kernels_are_listed_as_kernels(api: Api, jp_fetch: Any) -> None:
    model = await api.create()
    response = await jp_fetch("api", "kernels")
    assert model["kernel_id"] in response.body.decode()


async def test_restart_clears_state(api: Api) -> None:
    session = await api.create()
    await api.execute(session["id"], "secret = 42")
    reply = await api.request("POST", session["id"], "restart")
    assert reply.status == 200
    assert_matches("Session", reply.json)
    assert reply.json["execution_count"] == 0
    result = await api.execute(session["id"], "secret")
    assert result["status"] == "error"
    assert result["error"]["ename"] == "NameError"


async def test_interrupt_stops_running_code(api: Api) -> None:
    import asyncio

    session = await api.create()
    running = asyncio.ensure_future(
        api.execute(session["id"], "import time\nprint('started', flush=True)\ntime.sleep(60)")
    )
    # Wait until the session is busy before interrupting.
    for _ in range(200):
        if (await api.request("GET", session["id"])).json["status"] == "busy":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    reply = await api.request("POST", session["id"], "interrupt")
    assert reply.status == 204
    result = await running
    assert result["status"] == "error"
    assert result["error"]["ename"] == "KeyboardInterrupt"
    assert result["output"].startswith("started\n")


async def test_file_download(api: Api, jp_fetch: Any, jp_base_url: str) -> None:
    session = await api.create()
    result = await api.execute(
        session["id"], "from IPython.display import HTML\nHTML('<b>bold</b>')"
    )
    assert_matches("ExecutionResult", result)
    [stored] = result["files"]
    assert stored["mime_type"] == "text/html"
    assert stored["url"].startswith(jp_base_url)
    parts = stored["url"][len(jp_base_url) :].split("/")
    response = await jp_fetch(*parts)
    assert response.headers["Content-Type"] == "text/html"
    assert response.body == b"<b>bold</b>"
    assert int(response.headers["Content-Length"]) == stored["size"]


# -- authentication -----------------------------------------------------------------------

ROUTES = [
    ("GET", ()),
    ("POST", ()),
    ("GET", ("SID",)),
    ("DELETE", ("SID",)),
    ("POST", ("SID", "execute")),
    ("POST", ("SID", "interrupt")),
    ("POST", ("SID", "restart")),
    ("GET", ("SID", "files", "FID")),
]


@pytest.mark.parametrize(("method", "parts"), ROUTES)
async def test_every_route_needs_the_token(
    api: Api, method: str, parts: tuple[str, ...]
) -> None:
    reply = await api.request(
        method, *parts, headers={"Authorization": "token wrong"}, body={"code": "1"}
    )
    assert reply.status == 403
    assert "message" in reply.json


async def test_token_in_query_is_accepted(api: Api, jp_serverapp: Any) -> None:
    token = jp_serverapp.identity_provider.token
    reply = await api.request(
        "GET", headers={"Authorization": ""}, params={"token": token}
    )
    assert reply.status == 200


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_body", "needle"),
    [
        ("{not json", "Invalid JSON"),
        ("[1, 2]", "not of type 'object'"),
        ('{"kernel_name": 3}', "kernel_name"),
        ('{"name": ["a"]}', "name"),
        ('{"name": "../escape"}', "1 to 64 letters, digits"),
        ('{"name": ""}', "1 to 64 letters, digits"),
        ('{"kernle_name": "python3"}', "kernle_name"),
    ],
)
async def test_create_rejects_bad_bodies(api: Api, raw_body: str, needle: str) -> None:
    reply = await api.request("POST", raw_body=raw_body)
    assert reply.status == 400, reply.body
    assert needle in reply.json["message"]
    assert (await api.request("GET")).json == []


async def test_unknown_kernel_name_lists_the_kernels(api: Api) -> None:
    reply = await api.request("POST", body={"kernel_name": "cobol"})
    assert reply.status == 400
    assert "cobol" in reply.json["message"]
    assert "python3" in reply.json["message"]


async def test_duplicate_name_is_a_conflict(api: Api) -> None:
    await api.create(name="twin")
    reply = await api.request("POST", body={"name": "twin"})
    assert reply.status == 409
    assert "twin" in reply.json["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (None, "JSON body"),
        ({}, "'code' is a required property"),
        ({"code": 5}, "code"),
        ({"code": "1", "timeout": -1}, "timeout"),
        ({"code": "1", "timeout": 0}, "timeout"),
        ({"code": "1", "timeout": "10"}, "timeout"),
        ({"code": "1", "timeout": True}, "timeout"),
        ({"code": "1", "timeout": 10**9}, "timeout"),
        ({"code": "1", "timout": 3}, "timout"),
    ],
)
async def test_execute_rejects_bad_bodies(api: Api, body: Any, needle: str) -> None:
    session = await api.create()
    reply = await api.request("POST", session["id"], "execute", body=body)
    assert reply.status == 400, reply.body
    assert_matches("Error", reply.json)
    assert needle in reply.json["message"]
    # The session is untouched and still works.
    assert (await api.execute(session["id"], "1 + 1"))["output"] == "2\n"


async def test_non_finite_timeout_is_rejected(api: Api) -> None:
    session = await api.create()
    reply = await api.request("POST", session["id"], "execute", raw_body='{"code": "1", "timeout": NaN}')
    assert reply.status == 400
    assert "timeout" in reply.json["message"]


@pytest.mark.parametrize(
    ("method", "parts"), [route for route in ROUTES if route[1]]
)
async def test_unknown_session_is_404(api: Api, method: str, parts: tuple[str, ...]) -> None:
    reply = await api.request(method, *parts, body={"code": "1"})
    assert reply.status == 404
    assert "SID" in reply.json["message"]


@pytest.mark.parametrize(
    "file_id", ["FID", "..", "%2e%2e%2fetc%2fpasswd", "..%2F..%2Fetc%2Fpasswd", "a" * 24]
)
async def test_unknown_or_hostile_file_id_is_404(api: Api, file_id: str) -> None:
    session = await api.create()
    reply = await api.request("GET", session["id"], "files", file_id)
    assert reply.status == 404


async def test_kernel_activity_is_recorded_for_the_server(api: Api, jp_serverapp: Any) -> None:
    # The session's client takes over jupyter_server's activity watcher for its kernel: the
    # server's kernel model, its culler and JupyterLab still see what the kernel does.
    model = await api.create()
    kernel = jp_serverapp.kernel_manager.get_kernel(model["kernel_id"])
    before = kernel.last_activity
    states: list[str] = []

    async def watch() -> None:
        while True:
            states.append(kernel.execution_state)
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch())
    try:
        await api.execute(model["id"], "import time; time.sleep(0.5)")
    finally:
        watcher.cancel()
    assert "busy" in states
    assert kernel.execution_state == "idle"
    assert kernel.last_activity > before
    assert jp_serverapp.kernel_manager.last_kernel_activity >= kernel.last_activity
