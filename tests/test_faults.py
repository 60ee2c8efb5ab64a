"""Faults: kernels killed mid-call, clients that go away, concurrent clients, storms, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .conftest import Api, free_port

pytestmark = pytest.mark.timeout(180)


async def wait_until_busy(api: Api, session_id: str) -> None:
    for _ in range(200):
        if (await api.request("GET", session_id)).json["status"] == "busy":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the session never got busy")


async def test_kernel_killed_from_outside_mid_call(api: Api, jp_serverapp: Any) -> None:
    session = await api.create()
    call = asyncio.ensure_future(
        api.execute(session["id"], "import time\nprint('working', flush=True)\ntime.sleep(60)")
    )
    await wait_until_busy(api, session["id"])
    await asyncio.sleep(0.5)
    kernel = jp_serverapp.kernel_manager.get_kernel(session["kernel_id"])
    os.kill(kernel.provisioner.pid, signal.SIGKILL)
    result = await call
    assert result["status"] == "dead"
    assert result["output"].startswith("working\n")
    assert (await api.execute(session["id"], "print('again')"))["output"] == "again\n"


async def test_a_client_that_goes_away_has_its_call_interrupted(
    api: Api, jp_serverapp: Any, jp_http_port: int, jp_base_url: str
) -> None:
    session = await api.create()
    await api.execute(session["id"], "kept = 'yes'")
    token = jp_serverapp.identity_provider.token
    request = HTTPRequest(
        f"http://127.0.0.1:{jp_http_port}{jp_base_url}api/agent-sessions/{session['id']}/execute",
        method="POST",
        headers={"Authorization": f"token {token}"},
        body=json.dumps({"code": "import time\ntime.sleep(50)\nnever = 1", "timeout": 60}),
        request_timeout=1.0,  # the client gives up after a second and disconnects
    )
    with pytest.raises(HTTPClientError):
        await AsyncHTTPClient(force_instance=True).fetch(request)
    # The session is usable at once: the abandoned call was interrupted, state kept.
    started = time.monotonic()
    result = await api.execute(session["id"], "print(kept, 'never' in dir())")
    assert time.monotonic() - started < 10
    assert result["output"] == "yes False\n"


async def test_two_clients_on_one_session_take_turns(
    api: Api, jp_fetch: Any
) -> None:
    session = await api.create()
    other = Api(jp_fetch)  # a second client on its own connection
    first, second = await asyncio.gather(
        api.execute(session["id"], "import time\nfor i in range(3):\n    print('a', i); time.sleep(0.1)"),
        other.execute(session["id"], "for i in range(3):\n    print('b', i)"),
    )
    assert {first["output"], second["output"]} == {
        "a 0\na 1\na 2\n",
        "b 0\nb 1\nb 2\n",
    }
    assert abs(first["execution_count"] - second["execution_count"]) == 1


@pytest.mark.parametrize(
    "storm",
    [
        "import os, time\nfor _ in range(40):\n    if os.fork() == 0:\n        time.sleep(1)\n"
        "        os._exit(0)\nprint('forked')",
        "import threading\ndef noisy(n):\n    for i in range(200):\n        print(n, i)\n"
        "threads = [threading.Thread(target=noisy, args=(n,)) for n in range(200)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\nprint('joined')",
    ],
    ids=["fork", "threads"],
)
async def test_a_storm_in_one_kernel_does_not_hang_the_server(api: Api, storm: str) -> None:
    stormy, calm = await api.create(), await api.create()
    call = asyncio.ensure_future(api.execute(stormy["id"], storm, timeout=30))
    started = time.monotonic()
    assert (await api.execute(calm["id"], "6 * 7"))["output"] == "42\n"
    assert time.monotonic() - started < 10
    result = await call
    assert result["status"] in ("ok", "timeout")
    assert (await api.execute(stormy["id"], "'still here'"))["output"] == "'still here'\n"


def _call(url: str, token: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def test_sigterm_leaves_no_kernel_and_complete_transcripts(tmp_path: Path) -> None:
    port, token = free_port(), "t"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
            f"--port={port}", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api/agent-sessions"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _call(url, token)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        sessions = [_call(url, token, "POST", {}) for _ in range(2)]
        for session in sessions:
            for index in range(5):
                _call(f"{url}/{session['id']}/execute", token, "POST", {"code": f"print({index})"})
        kernel_pids = [
            child.pid
            for child in psutil.Process(process.pid).children(recursive=True)
            if "ipykernel" in " ".join(child.cmdline())
        ]
        assert len(kernel_pids) >= 2
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert not [pid for pid in kernel_pids if psutil.pid_exists(pid)]
    for session in sessions:
        notebook = nbformat.read(tmp_path / session["transcript_path"], as_version=4)
        assert [cell.outputs[0].text for cell in notebook.cells] == [f"{i}\n" for i in range(5)]
