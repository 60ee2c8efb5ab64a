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


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """Under CI a module skipped whole (``importorskip`` of a framework) fails the full run.

    The compat runs select by marker (``-m``) in environments without the frameworks: there a
    module of other tests may skip.
    """
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not collector.config.getoption("markexpr"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"Skipped under CI, where every test must run: {reason}"


#: The fast subset that CI runs at both ends of the supported versions (.ci/run: the lowest
#: declared version of every dependency on the lowest Python, the newest on the newest),
#: beside the whole suite on the default Python: the API, the client (both executors, the
#: CLI, the fallback), transcripts, JupyterLab, Kernel Gateway, ``--gateway-url``. Node ids,
#: or the start of one (a file; a test, for all its parameters). ``pytest -m compat`` runs
#: them; an entry that names no test is an error there.
COMPAT_TESTS = (
    "tests/test_api.py",
    "tests/test_transcripts.py",
    "tests/test_channels.py",
    "tests/test_packaging.py",
    "tests/test_client.py::test_state_lives_across_calls",
    "tests/test_client.py::test_error_keeps_earlier_output_and_has_a_plain_traceback",
    "tests/test_client.py::test_matplotlib_figure_is_saved_as_png",
    "tests/test_client.py::test_timeout_interrupts_and_keeps_output_and_state",
    "tests/test_client.py::test_dead_kernel_is_reported_and_the_next_call_works",
    "tests/test_client.py::test_wrong_token_raises_authentication_error",
    "tests/test_client.py::test_async_executor_runs_blocks_with_state_files_and_failures",
    "tests/test_client.py::test_async_timeout_and_cancellation_interrupt_the_kernel",
    "tests/test_client.py::test_stopping_the_local_server_leaves_no_process",
    "tests/test_client_cli.py::test_run_prints_each_cell_and_saves_images",
    "tests/test_client_fallback.py::test_state_lives_across_calls_on_a_kernel_of_its_own[plain-jupyter-server]",
    "tests/test_client_fallback.py::test_images_and_html_are_saved_as_files[plain-jupyter-server]",
    "tests/test_client_fallback.py::test_timeout_interrupts_and_keeps_output_and_state[plain-jupyter-server]",
    "tests/test_client_fallback.py::test_async_executor_runs_and_cancels_on_the_kernels_api[plain-jupyter-server]",
    "tests/test_jupyterlab.py",
    "tests/test_docker.py::test_no_engine_is_a_clear_error",
    "tests/test_docker.py::test_missing_custom_image",
)

#: Those that need jupyter_kernel_gateway, whose own floors (jupyter_server 2.12, ...) are
#: above the package's: CI's lowest run has them in an environment of their own. Marked both
#: ``compat`` and ``kernel_gateway``.
COMPAT_KERNEL_GATEWAY_TESTS = (
    "tests/test_kernel_gateway.py::test_create_answers_201_with_location",
    "tests/test_kernel_gateway.py::test_state_lives_across_calls",
    "tests/test_kernel_gateway.py::test_matplotlib_figure_is_a_downloadable_file",
    "tests/test_kernel_gateway.py::test_timeout_from_the_gateways_config_interrupts",
    "tests/test_kernel_gateway.py::test_requests_without_the_token_are_rejected",
    "tests/test_kernel_gateway.py::test_kernel_websocket_reaches_a_session_kernel",
    "tests/test_kernel_gateway.py::test_a_gateway_too_old_refuses_to_start_saying_what_to_install",
    "tests/test_client_fallback.py::test_state_lives_across_calls_on_a_kernel_of_its_own[kernel-gateway]",
    "tests/test_client_fallback.py::test_images_and_html_are_saved_as_files[kernel-gateway]",
    "tests/test_client_fallback.py::test_timeout_interrupts_and_keeps_output_and_state[kernel-gateway]",
    "tests/test_gateway_url.py::test_the_sessions_kernel_runs_on_the_gateway",
    "tests/test_gateway_url.py::test_state_lives_across_calls",
    "tests/test_gateway_url.py::test_matplotlib_figure_is_captured_as_a_file",
    "tests/test_gateway_url.py::test_timeout_interrupts_the_kernel_on_the_gateway",
    "tests/test_gateway_url.py::test_kernel_death_is_reported_and_the_session_recovers",
    "tests/test_gateway_url.py::test_restart_gives_a_fresh_kernel_on_the_gateway",
)


def _names(nodeid: str, entry: str) -> bool:
    """Whether a compat entry names the test ``nodeid``."""
    return nodeid == entry or nodeid.startswith((entry + "::", entry + "[")) or (
        entry.endswith(("[plain-jupyter-server]", "[kernel")) and nodeid.startswith(entry)
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the compat subset; under ``-m compat``, an entry that names no test is an error."""
    markers = dict.fromkeys(COMPAT_TESTS, ("compat",))
    markers.update(dict.fromkeys(COMPAT_KERNEL_GATEWAY_TESTS, ("compat", "kernel_gateway")))
    found = set()
    for item in items:
        for entry, names in markers.items():
            if _names(item.nodeid, entry):
                found.add(entry)
                for name in names:
                    item.add_marker(name)
    # Checked where the subset is asked for and its files are collected whole.
    if "compat" not in config.option.markexpr or any("::" in arg for arg in config.args):
        return
    collected_files = {item.nodeid.split("::")[0] for item in items}
    stale = [e for e in markers if e not in found and e.split("::")[0] in collected_files]
    if stale:
        raise pytest.UsageError(f"COMPAT_TESTS in tests/conftest.py names no test: {stale}")


def free_port() -> int:
    """A port nothing listens on now, for a server subprocess (started with port_retries=0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _status_kib(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise LookupError(field)


class PeakRss:
    """The growth of a process's peak resident set size over a stretch of time (Linux).

    Writing 5 to ``/proc/<pid>/clear_refs`` resets the kernel's high-water mark of the
    process's RSS (``VmHWM``) to its current RSS, so the peak is exact, not sampled.
    """

    def __init__(self, pid: int | str = "self") -> None:
        """Watch process ``pid`` (this one by default); the stretch starts now."""
        self.pid = pid
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        self.start_kib = _status_kib(pid, "VmRSS")

    def growth(self) -> int:
        """Bytes the peak RSS grew by since the start."""
        return (_status_kib(self.pid, "VmHWM") - self.start_kib) * 1024


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
