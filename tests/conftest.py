"""Fixtures: a real jupyter_server with the extension, under a non-root base_url."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPResponse

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Under CI (``CI=true``) a skipped test fails: CI installs everything every test needs.

    Locally a missing browser or gateway is a skip with its reason; in CI the same skip would
    hide a test that never ran.
    """
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"Skipped under CI, where every test must run: {reason}"


def free_port() -> int:
    """A port nothing listens on now, for a server subprocess (started with port_retries=0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


#: A short default keeps a test whose code hangs from waiting for the 60 s production default.
TEST_DEFAULT_TIMEOUT = 20


@pytest.fixture
def jp_base_url() -> str:
    """Serve under a prefix, so that a hard-coded ``/api/...`` shows up at once."""
    return "/prefix/jupyter/"


@pytest.fixture
def agent_config() -> dict[str, Any]:
    """Overrides of AgentSessionManager's config for one test."""
    return {}


@pytest.fixture
def jp_server_config(agent_config: dict[str, Any]) -> dict[str, Any]:
    """Enable the extension the way the installed jupyter-config file does."""
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_exec_ext": True}},
        "AgentSessionManager": {
            "default_timeout": TEST_DEFAULT_TIMEOUT,
            # Each test starts its own server: a pool per test would only load the machine.
            "kernel_pool": {},
            **agent_config,
        },
    }


@dataclass
class Reply:
    """A response: status, headers and the decoded JSON body (None when empty)."""

    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body) if self.body else None


class Api:
    """Calls to the agent-session API through pytest-jupyter's ``jp_fetch``."""

    def __init__(self, fetch: Callable[..., Any]) -> None:
        self._fetch = fetch

    async def request(
        self, method: str, *parts: str, body: Any = None, raw_body: str | None = None, **kwargs: Any
    ) -> Reply:
        """Send a request; 4xx and 5xx come back as replies, not exceptions."""
        if raw_body is None and body is not None:
            raw_body = json.dumps(body)
        if raw_body is None and method == "POST":
            raw_body = ""
        try:
            response: HTTPResponse = await self._fetch(
                "api", "agent-sessions", *parts, method=method, body=raw_body,
                allow_nonstandard_methods=True, request_timeout=120, **kwargs
            )
        except HTTPClientError as e:
            assert e.response is not None, e
            response = e.response
        return Reply(response.code, response.headers, response.body or b"")

    async def create(self, **fields: Any) -> dict[str, Any]:
        """Create a session and return its model."""
        reply = await self.request("POST", body=fields)
        assert reply.status == 201, reply.body
        model: dict[str, Any] = reply.json
        return model

    async def execute(self, session_id: str, code: str, **fields: Any) -> dict[str, Any]:
        """Run code and return the execution result."""
        reply = await self.request("POST", session_id, "execute", body={"code": code, **fields})
        assert reply.status == 200, reply.body
        result: dict[str, Any] = reply.json
        return result


@pytest.fixture
def api(jp_fetch: Callable[..., Any]) -> Api:
    """The agent-session API of a real server with the extension enabled."""
    return Api(jp_fetch)


@pytest.fixture
def manager(jp_serverapp: Any) -> Any:
    """The extension's AgentSessionManager inside the test server."""
    return jp_serverapp.web_app.settings["agent_session_manager"]


#: Code whose first line comes 1.5 s before its second, which says when it was printed.
TWO_LINES_CODE = (
    "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('later', time.time())"
)


def ndjson_events(response: Any) -> list[tuple[float, dict[str, Any]]]:
    """The lines of a streamed ``requests`` answer, each with the moment it arrived."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/x-ndjson"
    return [(time.time(), json.loads(line)) for line in response.iter_lines() if line]


def check_streamed_and_background(request: Callable[..., Any], session_id: str) -> None:
    """A streamed call's first line comes while it runs; a background run is read back.

    ``request(method, path, **kwargs)`` calls the agent-session API of the server under test
    (``requests`` underneath), wherever the kernels run.
    """
    path = f"api/agent-sessions/{session_id}"
    with request(
        "POST", f"{path}/execute", json={"code": TWO_LINES_CODE, "stream": True}, stream=True
    ) as response:
        lines = ndjson_events(response)
    first_came = next(t for t, event in lines if event.get("text") == "first\n")
    later = next(event for _, event in lines if str(event.get("text", "")).startswith("later"))
    assert first_came < float(later["text"].split()[-1])
    done = lines[-1][1]
    assert done["type"] == "done"
    assert done["result"]["output"].startswith("first\nlater")
    started = request("POST", f"{path}/execute", json={"code": "print('bg')", "background": True})
    assert started.status_code == 202, started.text
    execution_path = f"{path}/executions/{started.json()['id']}"
    assert started.headers["Location"].endswith(execution_path)
    model = request("GET", f"{execution_path}?wait=30").json()
    assert model["status"] == "ok"
    assert model["result"]["output"] == "bg\n"
    with request("GET", f"{execution_path}/events?after=0", stream=True) as response:
        replay = [event for _, event in ndjson_events(response)]
    assert [event["type"] for event in replay] == ["stream", "done"]
    assert replay[-1]["result"] == model["result"]
