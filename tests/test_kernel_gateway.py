"""The agent-session API inside a real Jupyter Kernel Gateway (``--KernelGatewayApp.api=...``)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from .conftest import check_streamed_and_background, free_port

# Only looked up, not imported: the gateway runs in its own process, and importing it here
# would only bring its import-time warnings into this one.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("kernel_gateway") is None,
    reason="jupyter_kernel_gateway is not installed (pip install jupyter_kernel_gateway)",
)

TOKEN = "gateway-test-token"
#: A base_url without the trailing slash jupyter_server would add: the gateway keeps it as given.
BASE_URL = "/kg"
ORIGIN = "https://agent.example"
#: Set on the gateway's command line, so the timeout test also shows that config applies.
DEFAULT_TIMEOUT = 3
#: Calls that should finish get this much, well above DEFAULT_TIMEOUT on a loaded machine.
CALL_TIMEOUT = 60


@dataclass
class Gateway:
    """A running gateway: its address, its process and the folder it runs in."""

    origin: str
    process: subprocess.Popen[bytes]
    root_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self.origin + BASE_URL

    def request(
        self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any
    ) -> requests.Response:
        """Call ``path`` (relative to the base_url) with the token, unless told otherwise."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"token {token}"
        return requests.request(
            method, f"{self.url}/{path}", headers=headers, timeout=CALL_TIMEOUT + 30, **kwargs
        )

    def create(self, **fields: Any) -> dict[str, Any]:
        """Create a session and return its model."""
        response = self.request("POST", "api/agent-sessions", json=fields)
        assert response.status_code == 201, response.text
        model: dict[str, Any] = response.json()
        return model

    def execute(self, session_id: str, code: str, **fields: Any) -> dict[str, Any]:
        """Run code (with a generous timeout unless one is given) and return the result."""
        fields.setdefault("timeout", CALL_TIMEOUT)
        response = self.request(
            "POST", f"api/agent-sessions/{session_id}/execute", json={"code": code, **fields}
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def kernel_ids(self) -> set[str]:
        """Ids of the kernels the gateway lists at its own ``/api/kernels``."""
        response = self.request("GET", "api/kernels")
        assert response.status_code == 200, response.text
        return {kernel["id"] for kernel in response.json()}

    def log(self) -> str:
        """What the gateway wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the gateway as an operator would (SIGTERM); kill it if it does not stop."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        pytest.fail("The gateway did not stop on SIGTERM within 30 s")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``jupyter kernelgateway`` serving the agent-session API, as the README starts it."""
    root_dir = tmp_path_factory.mktemp("gateway-root")
    jupyter_dirs = tmp_path_factory.mktemp("gateway-jupyter")
    port = free_port()
    log_path = jupyter_dirs / "gateway.log"
    command = [
        sys.executable, "-m", "jupyter", "kernelgateway",
        "--KernelGatewayApp.api=jupyter_exec_ext.kernel_gateway",
        f"--KernelGatewayApp.auth_token={TOKEN}",
        "--JupyterApp.answer_yes=true",
        "--JupyterWebsocketPersonality.list_kernels=true",
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        "--KernelGatewayApp.port_retries=0",
        f"--KernelGatewayApp.base_url={BASE_URL}",
        f"--KernelGatewayApp.allow_origin={ORIGIN}",
        f"--AgentSessionManager.default_timeout={DEFAULT_TIMEOUT}",
        # One pooled kernel: enough to see the pool started, light on a shared machine.
        "--AgentSessionManager.kernel_pool", "python3=1",
    ]  # fmt: skip
    runtime_dir = jupyter_dirs / "runtime"
    temp_dir = jupyter_dirs / "tmp"
    temp_dir.mkdir()
    env = {
        **os.environ,
        # Kernel connection files go here, so this gateway's kernels are known by their
        # command line; the gateway also writes its cookie secret here.
        "JUPYTER_RUNTIME_DIR": str(runtime_dir),
        "JUPYTER_CONFIG_DIR": str(jupyter_dirs / "config"),
        "JUPYTER_PLATFORM_DIRS": "1",
        # The manager keeps captured files in a temporary folder it removes at shutdown.
        "TMPDIR": str(temp_dir),
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=root_dir, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    running = Gateway(f"http://127.0.0.1:{port}", process, root_dir, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"The gateway exited:\n{running.log()}"
            assert time.monotonic() < deadline, f"The gateway never answered:\n{running.log()}"
            try:
                if running.request("GET", "api").status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        yield running
    finally:
        _stop(process)
    # Checked at once: ipykernel exits by itself about a second after its parent is gone, so
    # a later look would miss kernels the gateway left running.
    leftovers = _kernels_of(runtime_dir)
    for kernel in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            kernel.kill()
    log = running.log()
    assert not leftovers, f"Kernels outlived the gateway: {leftovers}\n{log}"
    assert not list(temp_dir.glob("jupyter-exec-outputs-*")), "The manager was not shut down"
    assert "Task exception was never retrieved" not in log, log
    assert "Unhandled error" not in log, log
    assert "Uncaught exception" not in log, log


def _kernels_of(runtime_dir: Path) -> list[psutil.Process]:
    """Running kernels whose connection file lies in ``runtime_dir``."""
    kernels = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(str(runtime_dir) in argument for argument in cmdline):
            kernels.append(process)
    return kernels


@pytest.fixture(scope="module")
def session(gateway: Gateway) -> dict[str, Any]:
    """A session shared by the tests that only read from it."""
    return gateway.create(name="shared")


def test_create_answers_201_with_location(gateway: Gateway) -> None:
    response = gateway.request("POST", "api/agent-sessions", json={"name": "created"})
    assert response.status_code == 201, response.text
    model = response.json()
    assert response.headers["Location"] == f"{BASE_URL}/api/agent-sessions/{model['id']}"
    assert model["name"] == "created"
    assert model["kernel_name"] == "python3"
    # No contents manager in a gateway, so no transcript.
    assert model["transcript_path"] is None
    fetched = requests.get(
        gateway.origin + response.headers["Location"],
        headers={"Authorization": f"token {TOKEN}"},
        timeout=30,
    )
    assert fetched.status_code == 200
    assert fetched.json()["id"] == model["id"]


def test_session_works_under_the_gateways_folder(gateway: Gateway) -> None:
    model = gateway.create(name="where")
    result = gateway.execute(model["id"], "import os\nprint(os.getcwd())")
    assert result["status"] == "ok", result
    assert Path(result["output"].strip()) == (gateway.root_dir / "agent-sessions" / "where")


def test_state_lives_across_calls(gateway: Gateway, session: dict[str, Any]) -> None:
    assert gateway.execute(session["id"], "x = 6 * 7")["status"] == "ok"
    result = gateway.execute(session["id"], "x")
    assert result["status"] == "ok", result
    assert result["output"] == "42\n"


def test_error_keeps_what_was_printed(gateway: Gateway, session: dict[str, Any]) -> None:
    result = gateway.execute(session["id"], "print('step 1')\n1 / 0")
    assert result["status"] == "error"
    assert result["error"]["ename"] == "ZeroDivisionError"
    output = result["output"]
    assert output.startswith("step 1\n"), output
    assert "ZeroDivisionError" in output


def test_matplotlib_figure_is_a_downloadable_file(
    gateway: Gateway, session: dict[str, Any]
) -> None:
    result = gateway.execute(
        session["id"], "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    )
    assert result["status"] == "ok", result
    [image] = result["files"]
    assert image["mime_type"] == "image/png"
    assert image["url"].startswith(f"{BASE_URL}/api/agent-sessions/{session['id']}/files/")
    headers = {"Authorization": f"token {TOKEN}"}
    download = requests.get(gateway.origin + image["url"], headers=headers, timeout=30)
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "image/png"
    # The gateway's CORS mixin clears the CSP; captured files must keep their sandbox.
    assert "sandbox" in download.headers["Content-Security-Policy"]
    assert download.content.startswith(b"\x89PNG")
    assert len(download.content) == image["size"]
    anonymous = requests.get(gateway.origin + image["url"], timeout=30)
    assert anonymous.status_code == 401


def test_timeout_from_the_gateways_config_interrupts(
    gateway: Gateway, session: dict[str, Any]
) -> None:
    code = "import time\nkept = 'yes'\nprint('before')\ntime.sleep(60)"
    started = time.monotonic()
    response = gateway.request(
        "POST", f"api/agent-sessions/{session['id']}/execute", json={"code": code}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "timeout"
    assert f"timeout of {DEFAULT_TIMEOUT} s" in result["error"]["evalue"]
    assert result["output"].startswith("before\n")
    assert time.monotonic() - started < 30
    assert gateway.execute(session["id"], "kept")["output"] == "'yes'\n"


def test_list_get_delete(gateway: Gateway) -> None:
    model = gateway.create(name="short-lived")
    listed = gateway.request("GET", "api/agent-sessions")
    assert listed.status_code == 200
    assert model["id"] in {item["id"] for item in listed.json()}
    fetched = gateway.request("GET", f"api/agent-sessions/{model['id']}")
    assert fetched.status_code == 200
    assert fetched.json()["kernel_id"] == model["kernel_id"]

    deleted = gateway.request("DELETE", f"api/agent-sessions/{model['id']}")
    assert deleted.status_code == 204
    assert gateway.request("GET", f"api/agent-sessions/{model['id']}").status_code == 404
    listed = gateway.request("GET", "api/agent-sessions")
    assert model["id"] not in {item["id"] for item in listed.json()}
    assert model["kernel_id"] not in gateway.kernel_ids()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/execute"),
        ("POST", "/interrupt"),
        ("GET", "/files/abc"),
    ],
)
def test_unknown_session_is_404(gateway: Gateway, method: str, path: str) -> None:
    unknown = str(uuid.uuid4())
    body = {"code": "1"} if path == "/execute" else None
    response = gateway.request(method, f"api/agent-sessions/{unknown}{path}", json=body)
    assert response.status_code == 404
    assert unknown in response.json()["message"]


@pytest.mark.parametrize(
    ("path", "raw_body", "needle"),
    [
        ("execute", "{not json", "JSON"),
        ("execute", "{}", "code"),
        ("execute", json.dumps({"code": 1}), "code"),
        ("execute", json.dumps({"code": "1", "timeout": -1}), "timeout"),
        ("execute", json.dumps({"code": "1", "colour": "red"}), "colour"),
    ],
)
def test_bad_body_is_400(
    gateway: Gateway, session: dict[str, Any], path: str, raw_body: str, needle: str
) -> None:
    response = gateway.request("POST", f"api/agent-sessions/{session['id']}/{path}", data=raw_body)
    assert response.status_code == 400
    assert needle in response.json()["message"]


def test_unknown_kernel_name_is_400(gateway: Gateway) -> None:
    response = gateway.request("POST", "api/agent-sessions", json={"kernel_name": "cobol"})
    assert response.status_code == 400
    message = response.json()["message"]
    assert "cobol" in message
    assert "python3" in message


def test_unsupported_method_says_what_is_allowed(gateway: Gateway) -> None:
    response = gateway.request("PUT", "api/agent-sessions")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "token wrong-token"},
        {"Authorization": f"Bearer {TOKEN}"},
    ],
    ids=["no token", "wrong token", "wrong scheme"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "api/agent-sessions"),
        ("POST", "api/agent-sessions"),
        ("GET", "api/agent-sessions/{id}"),
        ("DELETE", "api/agent-sessions/{id}"),
        ("POST", "api/agent-sessions/{id}/execute"),
        ("POST", "api/agent-sessions/{id}/restart"),
    ],
)
def test_requests_without_the_token_are_rejected(
    gateway: Gateway,
    session: dict[str, Any],
    headers: dict[str, str],
    method: str,
    path: str,
) -> None:
    before = gateway.request("GET", "api/agent-sessions").json()
    response = gateway.request(
        method,
        path.format(id=session["id"]),
        token=None,
        headers=headers,
        json={"code": "rejected = True"},
    )
    # The gateway's own answer to a bad token, as on its kernel routes.
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["message"]
    assert gateway.request("GET", "api/agent-sessions").json() == before


def test_wrong_token_in_query_is_rejected(gateway: Gateway) -> None:
    rejected = gateway.request("GET", "api/agent-sessions?token=wrong-token", token=None)
    assert rejected.status_code == 401
    accepted = gateway.request("GET", f"api/agent-sessions?token={TOKEN}", token=None)
    assert accepted.status_code == 200


def test_gateway_cors_headers_apply(gateway: Gateway) -> None:
    response = gateway.request("GET", "api/agent-sessions")
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_gateway_kernel_routes_still_work(gateway: Gateway, session: dict[str, Any]) -> None:
    assert session["kernel_id"] in gateway.kernel_ids()
    specs = gateway.request("GET", "api/kernelspecs")
    assert specs.status_code == 200
    assert "python3" in specs.json()["kernelspecs"]
    assert gateway.request("GET", "api/kernels", token=None).status_code == 401
    assert gateway.request("GET", "api/no-such-route").status_code == 404


def test_kernel_pool_is_started(gateway: Gateway) -> None:
    # A pooled kernel belongs to no session; it appears shortly after start and refills
    # after a session takes it.
    deadline = time.monotonic() + 60
    while True:
        listed = gateway.request("GET", "api/agent-sessions").json()
        session_kernels = {item["kernel_id"] for item in listed}
        if gateway.kernel_ids() - session_kernels:
            return
        assert time.monotonic() < deadline, "No pooled kernel appeared within 60 s"
        time.sleep(0.5)


def test_kernel_websocket_reaches_a_session_kernel(
    gateway: Gateway, session: dict[str, Any]
) -> None:
    async def kernel_info() -> dict[str, Any]:
        url = gateway.url.replace("http", "ws", 1)
        request = HTTPRequest(
            f"{url}/api/kernels/{session['kernel_id']}/channels",
            headers={"Authorization": f"token {TOKEN}"},
        )
        connection = await websocket_connect(request)
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": "kernel_info_request",
            "session": uuid.uuid4().hex,
            "username": "test",
            "version": "5.3",
            "date": "",
        }
        try:
            await connection.write_message(
                json.dumps(
                    {
                        "header": header,
                        "parent_header": {},
                        "metadata": {},
                        "content": {},
                        "channel": "shell",
                        "buffers": [],
                    }
                )
            )
            while True:
                raw = await asyncio.wait_for(connection.read_message(), timeout=30)
                assert raw is not None, "The gateway closed the kernel websocket"
                message: dict[str, Any] = json.loads(raw)
                if message["parent_header"].get("msg_id") == msg_id and (
                    message["msg_type"] == "kernel_info_reply"
                ):
                    return message
        finally:
            connection.close()
            # Wait for the closing handshake: asyncio.run ends the loop as soon as this returns,
            # and a socket still open then is only closed (with a ResourceWarning) by the GC.
            with contextlib.suppress(asyncio.TimeoutError):
                while await asyncio.wait_for(connection.read_message(), timeout=10) is not None:
                    pass

    reply = asyncio.run(kernel_info())
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["language_info"]["name"] == "python"


def test_foreign_origin_is_refused_as_on_kernel_routes(gateway: Gateway) -> None:
    foreign = {"Origin": "https://elsewhere.example"}
    ours = gateway.request("GET", "api/agent-sessions", headers=foreign)
    kernels = gateway.request("GET", "api/kernels", headers=foreign)
    assert ours.status_code == kernels.status_code == 404


def test_streamed_and_background_executions_work_inside_the_gateway(gateway: Gateway) -> None:
    session = gateway.create()
    check_streamed_and_background(gateway.request, session["id"])


def test_a_gateway_too_old_refuses_to_start_saying_what_to_install(tmp_path: Path) -> None:
    """Kernel Gateway 2.5.0 as ``importlib.metadata`` sees it (the extra declares >= 3.0):
    the gateway exits at start with the reason, instead of serving a broken API."""
    from .test_packaging import installed_as  # noqa: PLC0415 - one helper for both files

    shadow = installed_as(tmp_path / "site", "jupyter_kernel_gateway", "2.5.0")
    path = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    finished = subprocess.run(
        [
            sys.executable, "-m", "jupyter", "kernelgateway",
            "--KernelGatewayApp.api=jupyter_exec_ext.kernel_gateway",
            f"--KernelGatewayApp.port={free_port()}", "--KernelGatewayApp.port_retries=0",
        ],
        check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path, "JUPYTER_PLATFORM_DIRS": "1"},
    )  # fmt: skip
    assert finished.returncode != 0
    assert (
        "jupyter_exec_ext.kernel_gateway is not enabled: jupyter-kernel-gateway 2.5.0 is "
        "installed, it needs jupyter-kernel-gateway>=3.0"
    ) in finished.stderr


def test_workspace_and_env_in_the_gateway(gateway: Gateway) -> None:
    model = gateway.create(env={"GATEWAY_SECRET": "s3", "PYTHONFOO": "cold"})
    sid = model["id"]
    assert model["env_keys"] == ["GATEWAY_SECRET", "PYTHONFOO"]
    assert b"s3" not in gateway.request("GET", f"api/agent-sessions/{sid}").content
    put = gateway.request("PUT", f"api/agent-sessions/{sid}/workspace/in/data.bin", data=b"\0\1")
    assert put.status_code == 201, put.text
    result = gateway.execute(
        sid,
        "import os\nopen('out.txt', 'w').write(str(len(open('in/data.bin', 'rb').read())) + "
        "os.environ['GATEWAY_SECRET'])",
    )
    assert result["workspace_changes"] == [{"path": "out.txt", "size": 3, "change": "created"}]
    got = gateway.request("GET", f"api/agent-sessions/{sid}/workspace/out.txt")
    assert got.content == b"2s3"
    listing = gateway.request("GET", f"api/agent-sessions/{sid}/workspace").json()
    assert {e["name"] for e in listing["entries"]} >= {"in", "out.txt"}
    assert gateway.request("DELETE", f"api/agent-sessions/{sid}/workspace/in").status_code == 204
    refused = gateway.request("GET", f"api/agent-sessions/{sid}/workspace/../../etc/passwd")
    assert refused.status_code in (400, 404)
    no_token = gateway.request(
        "PUT", f"api/agent-sessions/{sid}/workspace/intruder", token=None, data=b"x"
    )
    assert no_token.status_code == 401
    session_dir = gateway.root_dir / "agent-sessions" / model["name"]
    assert not (session_dir / "intruder").exists()
    assert not (session_dir / "in").exists()
    gateway.request("DELETE", f"api/agent-sessions/{sid}")
