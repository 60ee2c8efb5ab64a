"""Spec-driven fuzzing: schemathesis sends generated requests to a real server for every route.

Every answer must be free of 5xx and match rest-api.yml (status, content type, body schema).
Half of the generated session ids are swapped for a live session's (and half of the file
and execution ids then for real ones), so the routes are exercised past their 404s; DELETE
keeps its generated ids so the live session survives.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from jupyter_exec_ext.spec import load_spec

from .conftest import free_port

#: Generated requests per operation: 12 operations x 260 is over 3,000 requests in all.
EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_EXAMPLES", "260"))
TOKEN = "fuzz-token"

schema = schemathesis.openapi.from_dict(load_spec())


def _call(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"token {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real `jupyter server` with a live session and one captured file."""
    root: Path = tmp_path_factory.mktemp("fuzz-root")
    port = free_port()
    # The server's log, to read when an answer was a 5xx: pytest names the folder it is in.
    log = (root.parent / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
            f"--port={port}", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
            "--AgentSessionManager.max_sessions=4", "--AgentSessionManager.default_timeout=5",
            "--AgentSessionManager.max_timeout=5", '--AgentSessionManager.kernel_pool={"python3": 1}',
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _call(f"{base}/api/agent-sessions")
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        session = _call(f"{base}/api/agent-sessions", "POST", {"name": "fuzz-target"})
        result = _call(
            f"{base}/api/agent-sessions/{session['id']}/execute",
            "POST",
            {"code": "from IPython.display import HTML\nHTML('<b>x</b>')"},
        )
        started = _call(
            f"{base}/api/agent-sessions/{session['id']}/execute",
            "POST",
            {"code": "print('in the background')", "background": True},
        )
        yield {
            "base": base,
            "session_id": session["id"],
            "file_id": result["files"][0]["id"],
            "execution_id": started["id"],
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.timeout(600)
def test_the_api_keeps_its_spec(case: Any, server: dict[str, str]) -> None:
    parameters = case.path_parameters or {}
    chooser = random.Random(repr(parameters))
    if "session_id" in parameters and case.method != "DELETE" and chooser.random() < 0.5:
        parameters["session_id"] = server["session_id"]
        for name in ("file_id", "execution_id"):
            if name in parameters and chooser.random() < 0.5:
                parameters[name] = server[name]
    case.call_and_validate(
        base_url=server["base"],
        headers={"Authorization": f"token {TOKEN}"},
        timeout=60,
        # A request can fit the schema and still be refused for what the server has, not for
        # its shape: a kernel name that is not installed, a timeout above max_timeout. Those
        # 400s are right, so "valid data is accepted" is not a check this API can pass.
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
