"""Round trip of a trivial call through a gateway-backed server against a local one.

Usage: ``python benchmarks/gateway_latency.py [--calls N]``

Starts a token-protected ``jupyter kernelgateway``, a ``jupyter server --gateway-url=...`` in
front of it and a plain local ``jupyter server``, all with the extension, on 127.0.0.1. It
makes one agent session on each and times ``x=1`` execute calls through the REST API,
interleaved (one call on each in turn) so both see the same machine load, then prints the
medians and their ratio (the target: gateway <= 1.5x local). Every process started here is
stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

GATEWAY_TOKEN = "bench-gateway"
SERVER_TOKEN = "bench-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _running(command: list[str], folder: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` with its own Jupyter folders and log; SIGTERM (then kill) at the end."""
    env = {
        **os.environ,
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_RUNTIME_DIR": str(folder / f"{name}-runtime"),
        "JUPYTER_CONFIG_DIR": str(folder / f"{name}-config"),
    }
    with (folder / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=log)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait(url: str, token: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.ConnectionError):
            headers = {"Authorization": f"token {token}"}
            if requests.get(url, headers=headers, timeout=10).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered")


def _server(port: int, root: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "jupyter", "server", "--allow-root", "--no-browser",
        f"--IdentityProvider.token={SERVER_TOKEN}", f"--ServerApp.root_dir={root}",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        "--AgentSessionManager.kernel_pool", "python3=0", *extra,
    ]  # fmt: skip


def main() -> None:
    """Start the three servers, time the calls, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="timed calls per server")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as temporary:
        folder = Path(temporary)
        root = folder / "root"
        root.mkdir()
        gateway_port, gateway_server_port, local_port = _free_port(), _free_port(), _free_port()
        gateway_command = [
            sys.executable, "-m", "jupyter", "kernelgateway",
            f"--KernelGatewayApp.auth_token={GATEWAY_TOKEN}", "--JupyterApp.answer_yes=true",
            "--JupyterWebsocketPersonality.list_kernels=true", "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={gateway_port}", "--KernelGatewayApp.port_retries=0",
        ]  # fmt: skip
        with contextlib.ExitStack() as stack:
            stack.enter_context(_running(gateway_command, folder, "gateway"))
            _wait(f"http://127.0.0.1:{gateway_port}/api", GATEWAY_TOKEN)
            behind_gateway = _server(
                gateway_server_port,
                root,
                f"--gateway-url=http://127.0.0.1:{gateway_port}",
                f"--GatewayClient.auth_token={GATEWAY_TOKEN}",
            )
            stack.enter_context(_running(behind_gateway, folder, "gateway-server"))
            stack.enter_context(_running(_server(local_port, root), folder, "local-server"))
            targets = {"gateway": gateway_server_port, "local": local_port}
            calls: dict[str, tuple[requests.Session, str]] = {}
            for name, port in targets.items():
                base = f"http://127.0.0.1:{port}/api/agent-sessions"
                _wait(base, SERVER_TOKEN)
                http = stack.enter_context(requests.Session())
                http.headers["Authorization"] = f"token {SERVER_TOKEN}"
                created = http.post(base, json={"name": f"bench-{name}"}, timeout=120)
                created.raise_for_status()
                calls[name] = (http, f"{base}/{created.json()['id']}/execute")
            timings: dict[str, list[float]] = {name: [] for name in targets}
            for round_number in range(10 + arguments.calls):
                for name, (http, url) in calls.items():
                    started = time.perf_counter()
                    result = http.post(url, json={"code": "x=1"}, timeout=60).json()
                    elapsed = time.perf_counter() - started
                    assert result["status"] == "ok", result
                    if round_number >= 10:  # the first calls warm caches up
                        timings[name].append(elapsed)
    medians = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    for name, values in timings.items():
        p90 = statistics.quantiles(values, n=10)[-1] * 1000
        calls_made = len(values)
        print(f"{name:8} median {medians[name]:6.2f} ms   p90 {p90:6.2f} ms   ({calls_made} calls)")
    print(f"gateway / local: {medians['gateway'] / medians['local']:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
