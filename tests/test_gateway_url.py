"""Agent sessions of a ``jupyter server --gateway-url=...`` whose kernels run on a real gateway.

A token-protected ``jupyter kernelgateway`` stands in for Enterprise Gateway; a real
``jupyter server`` with the extension sits in front of it, reaching it through a TCP relay that
stands for the load balancer in front of a real gateway (a test cuts the line). Every test
talks to the server's REST API and checks on the gateway's own ``/api/kernels`` where the
kernels are.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from queue import Empty
from typing import Any

import psutil
import pytest
import requests
from jupyter_server.services.kernels.connection.base import serialize_binary_message

from jupyter_exec_ext.channels import ChannelQueue
from jupyter_exec_ext.gateway import GatewayKernelWebsocket, kernel_spec_from_model

from .conftest import check_streamed_and_background, free_port

GATEWAY_TOKEN = "gateway-token"
SERVER_TOKEN = "server-token"
#: Not the root, so a hard-coded ``/api/...`` in the extension shows up at once.
BASE_URL = "/jp/"
#: Calls that should finish get this much; far above what they need on a loaded machine.
CALL_TIMEOUT = 60

needs_gateway = pytest.mark.skipif(
    importlib.util.find_spec("kernel_gateway") is None,
    reason="jupyter_kernel_gateway is not installed (pip install jupyter_kernel_gateway)",
)


@dataclass
class Process:
    """A server subprocess: its URL, token, process and log file."""

    url: str
    token: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call ``path`` (relative to the base URL) with the token."""
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        return requests.request(
            method, self.url + path, headers=headers, timeout=CALL_TIMEOUT + 30, **kwargs
        )

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace")


def _start(
    command: list[str], env: dict[str, str], log_path: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )


def _wait_until_ready(server: Process, path: str) -> None:
    """Wait until ``path`` answers 200 (the server is up, with its API)."""
    deadline = time.monotonic() + 90
    while True:
        assert server.process.poll() is None, f"{server.url} exited:\n{server.log()}"
        assert time.monotonic() < deadline, f"{server.url} never answered:\n{server.log()}"
        with contextlib.suppress(requests.ConnectionError):
            if server.request("GET", path).status_code == 200:
                return
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes], name: str) -> None:
    """Stop a server as an operator would (SIGTERM); kill it if it does not stop."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        pytest.fail(f"The {name} did not stop on SIGTERM within 30 s")


def _kernels_of(runtime_dir: Path) -> list[psutil.Process]:
    """Running kernels whose connection file lies in ``runtime_dir``."""
    kernels = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(runtime_dir) in argument for argument in process.info["cmdline"] or []):
                kernels.append(process)
    return kernels


class TcpProxy:
    """A TCP relay between the server and the gateway, so a test can cut the line.

    It stands for the load balancer or ingress in front of a real Enterprise Gateway, which
    may drop a websocket at any time.
    """

    def __init__(self, target_port: int) -> None:
        """Relay connections on a free local port to ``target_port``."""
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        # accept() is not woken by close() from another thread: it looks at a flag now and then.
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pipe, args=(source, sink), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        # One direction ended: end the other too, as a dropped connection does.
        self._drop(source, sink)

    def _drop(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every relayed connection (new ones are still accepted)."""
        with self._lock:
            sockets = list(self._sockets)
        self._drop(*sockets)

    def close(self) -> None:
        """Stop relaying and close every socket."""
        self._closed = True
        self.cut()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


@dataclass
class Deployment:
    """The gateway, the line to it and the server in front of it."""

    gateway: Process
    proxy: TcpProxy
    server: Process

    def gateway_kernel_ids(self) -> set[str]:
        """Ids of the kernels the gateway runs, from its own ``/api/kernels``."""
        response = self.gateway.request("GET", "api/kernels")
        assert response.status_code == 200, response.text
        return {kernel["id"] for kernel in response.json()}

    def create(self, **fields: Any) -> dict[str, Any]:
        """Create a session through the server and return its model."""
        response = self.server.request("POST", "api/agent-sessions", json=fields)
        assert response.status_code == 201, response.text
        model: dict[str, Any] = response.json()
        return model

    def execute(self, session_id: str, code: str, **fields: Any) -> dict[str, Any]:
        """Run code through the server (with a generous timeout unless one is given)."""
        fields.setdefault("timeout", CALL_TIMEOUT)
        response = self.server.request(
            "POST", f"api/agent-sessions/{session_id}/execute", json={"code": code, **fields}
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A token-protected kernel gateway and ``jupyter server --gateway-url`` in front of it."""
    folder = tmp_path_factory.mktemp("gateway-url")
    gateway_runtime = folder / "gateway-runtime"
    server_root = folder / "server-root"
    server_root.mkdir()
    server_tmp = folder / "server-tmp"
    server_tmp.mkdir()
    base_env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1"}
    gateway_port, server_port = free_port(), free_port()

    gateway_process = _start(
        [
            sys.executable, "-m", "jupyter", "kernelgateway",
            f"--KernelGatewayApp.auth_token={GATEWAY_TOKEN}",
            "--JupyterApp.answer_yes=true",
            "--JupyterWebsocketPersonality.list_kernels=true",
            "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={gateway_port}",
            "--KernelGatewayApp.port_retries=0",
        ],
        {
            **base_env,
            # Kernel connection files go here, so the gateway's kernels are known by their
            # command line when the test looks for leftovers.
            "JUPYTER_RUNTIME_DIR": str(gateway_runtime),
            "JUPYTER_CONFIG_DIR": str(folder / "gateway-config"),
        },
        folder / "gateway.log",
        folder,
    )  # fmt: skip
    gateway = Process(
        f"http://127.0.0.1:{gateway_port}/", GATEWAY_TOKEN, gateway_process, folder / "gateway.log"
    )
    server: Process | None = None
    proxy = TcpProxy(gateway_port)
    try:
        _wait_until_ready(gateway, "api")
        server_process = _start(
            [
                sys.executable, "-m", "jupyter", "server",
                "--allow-root", "--no-browser",
                f"--gateway-url=http://127.0.0.1:{proxy.port}",
                f"--GatewayClient.auth_token={GATEWAY_TOKEN}",
                f"--IdentityProvider.token={SERVER_TOKEN}",
                f"--ServerApp.root_dir={server_root}",
                f"--ServerApp.base_url={BASE_URL}",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={server_port}",
                "--ServerApp.port_retries=0",
                # One pooled kernel: the pool runs on the gateway too, light on a shared machine.
                "--AgentSessionManager.kernel_pool", "python3=1",
            ],
            {
                **base_env,
                "JUPYTER_RUNTIME_DIR": str(folder / "server-runtime"),
                "JUPYTER_CONFIG_DIR": str(folder / "server-config"),
                # The manager keeps captured files in a temporary folder it removes at shutdown.
                "TMPDIR": str(server_tmp),
            },
            folder / "server.log",
            folder,
        )  # fmt: skip
        server = Process(
            f"http://127.0.0.1:{server_port}{BASE_URL}",
            SERVER_TOKEN,
            server_process,
            folder / "server.log",
        )
        _wait_until_ready(server, "api/agent-sessions")
        yield Deployment(gateway, proxy, server)
        # The server shuts its sessions' and pool's kernels down on the gateway as it stops.
        _stop(server.process, "server")
        left_on_gateway = Deployment(gateway, proxy, server).gateway_kernel_ids()
        assert not left_on_gateway, f"The server left kernels on the gateway:\n{server.log()}"
    finally:
        if server is not None:
            _stop(server.process, "server")
        _stop(gateway_process, "gateway")
        proxy.close()
        # At once: ipykernel exits by itself about a second after its parent is gone, so a
        # later look would miss kernels the gateway left running.
        leftovers = _kernels_of(gateway_runtime)
        for kernel in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                kernel.kill()
    assert not leftovers, f"Kernels outlived the gateway: {leftovers}\n{gateway.log()}"
    assert server is not None
    server_log = _without_collaboration_shutdown_race(server.log())
    for problem in ("Task exception was never retrieved", "Unhandled error", "Uncaught exception"):
        assert problem not in server_log, server_log
    assert not list(server_tmp.glob("jupyter-exec-outputs-*")), "The manager was not shut down"
    # jupyter_server's own gateway client sends messages without a channel; ours does not.
    assert "No channel specified" not in gateway.log(), gateway.log()


def _without_collaboration_shutdown_race(log: str) -> str:
    """``log`` without jupyter-collaboration's own shutdown race (its room cleaner stopping a
    websocket server that the extension's stop has stopped already: jupyter-collaboration#161,
    #546), which the ``[lab]`` extra brings into every server and is none of ours."""
    return re.sub(
        r"Task exception was never retrieved\nfuture: <Task finished [^\n]*"
        r"JupyterWebsocketServer\.clean\(\)[^\n]*\n(?:(?:Traceback|[ \t])[^\n]*\n)*"
        r"RuntimeError: WebsocketServer not running\n",
        "",
        log,
    )


@pytest.fixture(scope="module")
def session(deployment: Deployment) -> dict[str, Any]:
    """A session shared by the tests that leave its kernel alive."""
    return deployment.create(name="shared")


@needs_gateway
def test_the_sessions_kernel_runs_on_the_gateway(
    deployment: Deployment, session: dict[str, Any]
) -> None:
    assert session["kernel_id"] in deployment.gateway_kernel_ids()
    # The server runs no kernel process of its own: its kernel manager is the gateway's.
    result = deployment.execute(session["id"], "import os\nprint(os.getpid())")
    kernel = psutil.Process(int(result["output"]))
    assert deployment.gateway.process.pid in {parent.pid for parent in kernel.parents()}


@needs_gateway
def test_state_lives_across_calls(deployment: Deployment, session: dict[str, Any]) -> None:
    assert deployment.execute(session["id"], "x = 6 * 7")["status"] == "ok"
    result = deployment.execute(session["id"], "x")
    assert result["status"] == "ok", result
    assert result["output"] == "42\n"


@needs_gateway
def test_error_keeps_what_was_printed_in_order(
    deployment: Deployment, session: dict[str, Any]
) -> None:
    result = deployment.execute(session["id"], "for i in range(3):\n    print('step', i)\n1 / 0")
    assert result["status"] == "error"
    assert result["error"]["ename"] == "ZeroDivisionError"
    output = result["output"]
    assert output.startswith("step 0\nstep 1\nstep 2\n"), output
    assert "ZeroDivisionError" in output


@needs_gateway
def test_matplotlib_figure_is_captured_as_a_file(
    deployment: Deployment, session: dict[str, Any]
) -> None:
    result = deployment.execute(
        session["id"], "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    )
    assert result["status"] == "ok", result
    [image] = result["files"]
    assert image["mime_type"] == "image/png"
    assert image["url"].startswith(f"{BASE_URL}api/agent-sessions/{session['id']}/files/")
    download = deployment.server.request("GET", image["url"][len(BASE_URL) :])
    assert download.status_code == 200
    assert download.content.startswith(b"\x89PNG")
    assert len(download.content) == image["size"]


@needs_gateway
def test_markdown_pdf_and_odd_text_reach_the_agent_from_the_gateway(
    deployment: Deployment, session: dict[str, Any]
) -> None:
    result = deployment.execute(
        session["id"],
        "import base64\nfrom IPython.display import Markdown, display\n"
        "display(Markdown('**bold**'))\nprint('odd \\ud800 text')\n"
        "display({'application/pdf': base64.b64encode(b'%PDF-1.4').decode()}, raw=True)",
    )
    assert result["status"] == "ok", result
    [pdf] = result["files"]
    assert pdf["mime_type"] == "application/pdf"
    assert result["output"] == (
        f"**bold**\nodd \\ud800 text\n[application/pdf: {pdf['id']}]\n"
    )


@needs_gateway
def test_exit_on_the_gateway_gives_a_fresh_kernel(deployment: Deployment) -> None:
    session = deployment.create()
    deployment.execute(session["id"], "x = 1")
    result = deployment.execute(session["id"], "exit()")
    assert result["status"] == "ok", result
    assert "asked the kernel to exit" in result["output"]
    after = deployment.execute(session["id"], "print('fresh'); x")
    assert after["output"].startswith("fresh\n"), after
    assert after["error"]["ename"] == "NameError"


@needs_gateway
def test_timeout_interrupts_the_kernel_on_the_gateway(
    deployment: Deployment, session: dict[str, Any]
) -> None:
    code = "import time\nkept = 'yes'\nprint('before')\ntime.sleep(60)"
    started = time.monotonic()
    result = deployment.execute(session["id"], code, timeout=3)
    assert result["status"] == "timeout", result
    assert result["output"].startswith("before\n")
    assert "KeyboardInterrupt" in result["output"]
    assert time.monotonic() - started < 30
    assert deployment.execute(session["id"], "kept")["output"] == "'yes'\n"


@needs_gateway
def test_waiting_for_a_sleeping_kernel_leaves_the_server_idle(
    deployment: Deployment, session: dict[str, Any]
) -> None:
    server = psutil.Process(deployment.server.process.pid)
    before, started = server.cpu_times(), time.monotonic()
    result = deployment.execute(session["id"], "import time\ntime.sleep(5)")
    after, elapsed = server.cpu_times(), time.monotonic() - started
    assert result["status"] == "ok", result
    used = (after.user + after.system) - (before.user + before.system)
    # A check for busy waiting (jupyter_server's own gateway client takes a full core), not
    # a benchmark: the server does next to nothing while the kernel sleeps.
    assert used < 0.3 * elapsed, f"{used:.2f} s of CPU in {elapsed:.2f} s"


@needs_gateway
def test_kernel_death_is_reported_and_the_session_recovers(deployment: Deployment) -> None:
    model = deployment.create(name="dies")
    assert deployment.execute(model["id"], "doomed = 1")["status"] == "ok"
    started = time.monotonic()
    result = deployment.execute(model["id"], "print('going', flush=True)\nimport os; os._exit(1)")
    assert result["status"] == "dead", result
    assert result["error"]["ename"] == "KernelDied"
    # Seen on the gateway's websocket, not waited out: the call's timeout is a minute.
    assert time.monotonic() - started < CALL_TIMEOUT / 2
    after = deployment.execute(model["id"], "print(1 + 1)")
    assert after["status"] == "ok", after
    assert after["output"] == "2\n"
    gone = deployment.execute(model["id"], "doomed")
    assert gone["error"]["ename"] == "NameError"
    assert model["kernel_id"] in deployment.gateway_kernel_ids()


@needs_gateway
def test_kernel_death_between_calls_is_noticed(deployment: Deployment) -> None:
    model = deployment.create(name="killed")
    pid = int(deployment.execute(model["id"], "import os\nprint(os.getpid())")["output"])
    psutil.Process(pid).kill()
    # The gateway's restarter notices within its poll interval (3 s) and says so on the
    # kernel's websocket; the session hears it there, with no call running.
    deadline = time.monotonic() + CALL_TIMEOUT
    while f"kernel {model['kernel_id']} restarted" not in deployment.gateway.log():
        assert time.monotonic() < deadline, deployment.gateway.log()
        time.sleep(0.2)
    result = deployment.execute(model["id"], "print('fresh')")
    assert result["status"] == "ok", result
    assert result["output"].endswith("fresh\n")
    assert "The kernel had died since the last call" in result["output"]


@needs_gateway
def test_a_kernel_deleted_on_the_gateway_ends_its_session(deployment: Deployment) -> None:
    model = deployment.create(name="culled")
    # As the gateway's culler would: the kernel goes away without a word on its websocket.
    deleted = deployment.gateway.request("DELETE", f"api/kernels/{model['kernel_id']}")
    assert deleted.status_code == 204
    started = time.monotonic()
    result = deployment.execute(model["id"], "print('never runs')")
    # Noticed by asking the gateway once the call has heard nothing for a while (5 s), not
    # by waiting for the call's timeout.
    assert result["status"] == "dead", result
    assert time.monotonic() - started < CALL_TIMEOUT / 2
    fetched = deployment.server.request("GET", f"api/agent-sessions/{model['id']}")
    assert fetched.json()["status"] == "dead"
    again = deployment.execute(model["id"], "print('still not')")
    assert again["status"] == "dead", again
    response = deployment.server.request("DELETE", f"api/agent-sessions/{model['id']}")
    assert response.status_code == 204


@needs_gateway
def test_a_dropped_websocket_is_opened_again(deployment: Deployment) -> None:
    model = deployment.create(name="dropped")
    assert deployment.execute(model["id"], "kept = 5")["status"] == "ok"
    # Nothing else on the line while it is cut: the pool has refilled (its kernel's websocket
    # is cut too, and opened again when a session takes it).
    _wait_for_a_pooled_kernel(deployment)
    deployment.proxy.cut()
    result = deployment.execute(model["id"], "print(kept)")
    assert result["status"] == "ok", result
    assert result["output"] == "5\n"
    # Cut while the kernel runs: the gateway keeps what the kernel says meanwhile and hands
    # it over when the websocket comes back.
    cutter = threading.Timer(1.0, deployment.proxy.cut)
    cutter.start()
    try:
        result = deployment.execute(
            model["id"],
            "import time\nprint('a', flush=True)\ntime.sleep(1.5)\nprint('b', flush=True)\n"
            "time.sleep(1.5)\nprint('c')",
        )
    finally:
        cutter.join()
    assert result["status"] == "ok", result
    assert result["output"] == "a\nb\nc\n"
    assert deployment.execute(model["id"], "kept")["output"] == "5\n"


@needs_gateway
def test_restart_gives_a_fresh_kernel_on_the_gateway(deployment: Deployment) -> None:
    model = deployment.create(name="restarted")
    assert deployment.execute(model["id"], "forgotten = 1")["status"] == "ok"
    response = deployment.server.request("POST", f"api/agent-sessions/{model['id']}/restart")
    assert response.status_code == 200, response.text
    result = deployment.execute(model["id"], "forgotten")
    assert result["error"]["ename"] == "NameError"
    assert deployment.execute(model["id"], "print('again')")["output"] == "again\n"


def _wait_for_a_pooled_kernel(deployment: Deployment) -> set[str]:
    """Wait until the pool has a kernel ready on the gateway; the ids of the pooled kernels.

    Ready: idle, with nothing sent to it for a second, so it has loaded the kernel helper and
    no start of the pool is under way.
    """
    deadline = time.monotonic() + CALL_TIMEOUT
    while True:
        listed = deployment.server.request("GET", "api/agent-sessions").json()
        in_sessions = {session["kernel_id"] for session in listed}
        quiet_since = datetime.now(timezone.utc) - timedelta(seconds=1)
        pooled = {
            kernel["id"]
            for kernel in deployment.gateway.request("GET", "api/kernels").json()
            if kernel["id"] not in in_sessions
            and kernel["execution_state"] == "idle"
            and datetime.fromisoformat(kernel["last_activity"]) < quiet_since
        }
        if pooled:
            return pooled
        assert time.monotonic() < deadline, "The pool never started a kernel on the gateway"
        time.sleep(0.5)


@needs_gateway
def test_pooled_kernels_wait_on_the_gateway(deployment: Deployment) -> None:
    ready = _wait_for_a_pooled_kernel(deployment)
    model = deployment.create(name="from-the-pool")
    assert model["kernel_id"] in ready
    assert deployment.execute(model["id"], "print('pooled')")["output"] == "pooled\n"


@needs_gateway
def test_delete_shuts_the_kernel_down_on_the_gateway(deployment: Deployment) -> None:
    model = deployment.create(name="deleted")
    assert model["kernel_id"] in deployment.gateway_kernel_ids()
    response = deployment.server.request("DELETE", f"api/agent-sessions/{model['id']}")
    assert response.status_code == 204
    assert model["kernel_id"] not in deployment.gateway_kernel_ids()


@needs_gateway
def test_unknown_kernel_name_lists_the_gateways_kernels(deployment: Deployment) -> None:
    response = deployment.server.request(
        "POST", "api/agent-sessions", json={"kernel_name": "cobol"}
    )
    assert response.status_code == 400
    message = response.json()["message"]
    assert "cobol" in message
    assert "python3" in message


# -- the parts of the client that need no gateway ------------------------------------------


def test_kernel_spec_from_the_gateways_model() -> None:
    spec = kernel_spec_from_model(
        {
            "name": "python3",
            "spec": {"display_name": "Python 3", "language": "python", "argv": ["python"]},
            "resources": {},
        }
    )
    assert (spec.name, spec.language, spec.display_name) == ("python3", "python", "Python 3")


def test_messages_are_read_as_text_or_with_binary_buffers() -> None:
    message = {
        "header": {"msg_id": "1", "msg_type": "comm_msg"},
        "parent_header": {},
        "metadata": {},
        "content": {"data": {}},
        "channel": "iopub",
    }
    as_text = GatewayKernelWebsocket._decode(json.dumps(message))
    assert as_text == message
    as_binary = GatewayKernelWebsocket._decode(
        serialize_binary_message({**message, "buffers": [b"\x00\x01"]})  # type: ignore[no-untyped-call]
    )
    assert as_binary["content"] == message["content"]
    assert [bytes(buffer) for buffer in as_binary["buffers"]] == [b"\x00\x01"]
    with pytest.raises(ValueError, match="not a kernel message"):
        GatewayKernelWebsocket._decode("[1, 2]")


def test_channel_queue_waits_without_losing_messages() -> None:
    async def scenario() -> None:
        queue = ChannelQueue()
        with pytest.raises(Empty):
            await queue.get(timeout=0.05)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, queue.put, {"n": 1})
        assert await queue.get(timeout=5) == {"n": 1}
        # The timeout passes and a message arrives before the reader runs again: the reader
        # gets the message (asyncio.wait_for on Python < 3.12 can drop it in this race).
        reader = asyncio.ensure_future(queue.get(timeout=0.05))
        await asyncio.sleep(0)
        # Block the loop on purpose, so the reader's timer is due when the message comes.
        time.sleep(0.1)  # noqa: ASYNC251
        queue.put({"n": 2})
        assert await reader == {"n": 2}
        # Closing delivers what is there, then wakes a waiting reader at once.
        queue.put({"n": 3})
        queue.close()
        assert await queue.get(timeout=5) == {"n": 3}
        started = loop.time()
        with pytest.raises(Empty):
            await queue.get(timeout=5)
        assert loop.time() - started < 1

    asyncio.run(scenario())


def test_channel_queue_wakes_a_reader_when_closed() -> None:
    async def scenario() -> None:
        queue = ChannelQueue()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, queue.close)
        started = loop.time()
        with pytest.raises(Empty):
            await queue.get(timeout=None)
        assert loop.time() - started < 1

    asyncio.run(scenario())


@needs_gateway
def test_streamed_and_background_executions_behind_gateway_url(deployment: Deployment) -> None:
    session = deployment.create()
    check_streamed_and_background(deployment.server.request, session["id"])


def test_env_and_workspace_behind_the_gateway(deployment: Deployment) -> None:
    """The env reaches the gateway's kernel (a gateway passes only KERNEL_* variables at
    start; the set-up code puts the rest in). The workspace is the server's folder: here the
    gateway shares the server's machine, so its kernel works in that very folder."""
    model = deployment.create(env={"KERNEL_VIA_START": "k", "AGENT_KEY": "v"})
    sid = model["id"]
    assert model["env_keys"] == ["AGENT_KEY", "KERNEL_VIA_START"]
    put = deployment.server.request(
        "PUT", f"api/agent-sessions/{sid}/workspace/uploaded.txt", data=b"from the server"
    )
    assert put.status_code == 201, put.text
    result = deployment.execute(
        sid,
        "import os\nprint(os.environ['KERNEL_VIA_START'], os.environ['AGENT_KEY'])\n"
        "print(open('uploaded.txt').read())\n_ = open('made.txt', 'w').write('k')",
    )
    assert result["output"] == "k v\nfrom the server\n", result
    assert result["workspace_changes"] == [{"path": "made.txt", "size": 1, "change": "created"}]
    got = deployment.server.request("GET", f"api/agent-sessions/{sid}/workspace/made.txt")
    assert got.content == b"k"
    assert deployment.execute(sid, "import os\nos._exit(1)")["status"] == "dead"
    result = deployment.execute(sid, "import os\nprint(os.environ['AGENT_KEY'])")
    assert result["output"] == "v\n"
    deployment.server.request("DELETE", f"api/agent-sessions/{sid}")
