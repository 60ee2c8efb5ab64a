"""Measure our path (client -> extension -> kernel) against the raw kernel floor, in one run.

Usage: ``python benchmarks/run.py [--quick] [--live-only | --mcp-only] [--json PATH] [--strict]``

Our path runs through real ``jupyter server`` subprocesses with the extension; the floor is
jupyter_client's ``BlockingKernelClient`` driving an ipykernel from this process, doing the
same work our server does per call (send, read IOPub until the request's idle status, read
the shell reply). Both run side by side on the same machine in the same run, interleaved
where that is possible, and the table compares them. ``benchmarks/README.md`` explains every
line and its target. Every process started here is stopped on exit, Ctrl-C and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import importlib
import importlib.metadata
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from queue import Empty
from types import ModuleType
from typing import Any, Protocol

import psutil
import requests
from jupyter_client.manager import KernelManager

BENCHMARKS_DIR = Path(__file__).resolve().parent
DEFAULT_JSON_PATH = BENCHMARKS_DIR / "results" / "latest.json"

CALL_CODE = "x=1"
PLOT_CODE = """\
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
ax.plot(range(100), [i * i for i in range(100)])
plt.show()
"""
PLOT_WARMUP_CODE = "import matplotlib.pyplot as plt\n" + PLOT_CODE
MEGABYTE = 1_000_000
#: Calls whose output is 100 MB: the server's memory must not follow.
HUGE_OUTPUT_CODES = {
    "print": "print('x' * 100_000_000)",
    "result": "'x' * 100_000_000",
    "error": "raise ValueError('x' * 100_000_000)",
}
#: Kernels the extension keeps ready by default (``AgentSessionManager.kernel_pool``).
DEFAULT_POOL_SIZE = 2

#: Seconds any single HTTP request or kernel wait may take before the benchmark gives up.
REQUEST_TIMEOUT = 300.0
#: Sessions created or kernels started at the same time while setting up the big phases.
SETUP_PARALLELISM = 4


# -- settings ------------------------------------------------------------------------------


#: Fills a session's working folder with 1,000 small files.
WORKSPACE_FILES_CODE = (
    "import os\nos.makedirs('files', exist_ok=True)\n"
    "for n in range(1000):\n    open(f'files/f{n}.txt', 'w').write('x')"
)


@dataclass(frozen=True)
class Settings:
    """How many samples each measurement takes."""

    warmup_calls: int
    roundtrip_calls: int
    roundtrip_block: int
    plot_calls: int
    print_1mb_calls: int
    print_10mb_calls: int
    pool_creations: int
    cold_creations: int
    concurrent_sessions: int
    calls_per_session: int
    concurrency_rounds: int
    cpu_window: float
    startup_runs: int
    latency_calls: int = 100
    streamed_calls: int = 200
    background_megabytes: int = 100
    #: Samples a side of each after-idle line (each costs ``idle_pause`` seconds or more).
    rhythm_calls: int = 25
    rhythm_creations: int = 12
    first_plots: int = 6
    #: Seconds of idle before each after-idle sample: an agent's model thinking.
    idle_pause: float = 2.0
    #: Idle session counts the many-sessions lines step through.
    session_steps: tuple[int, ...] = (1, 50, 100, 200)


FULL = Settings(
    warmup_calls=20,
    roundtrip_calls=300,
    roundtrip_block=25,
    plot_calls=20,
    print_1mb_calls=10,
    print_10mb_calls=5,
    pool_creations=10,
    # A kernel's boot varies by +-50 ms from one start to the next: 10 a side left the
    # medians' ratio moving by as much as its target's margin.
    cold_creations=20,
    concurrent_sessions=32,
    calls_per_session=50,
    concurrency_rounds=2,
    cpu_window=10.0,
    startup_runs=3,
)

#: A smoke run: every measurement once, small counts, well under 90 s.
QUICK = Settings(
    warmup_calls=5,
    roundtrip_calls=40,
    roundtrip_block=10,
    plot_calls=2,
    print_1mb_calls=1,
    print_10mb_calls=1,
    pool_creations=2,
    cold_creations=2,
    concurrent_sessions=4,
    calls_per_session=10,
    concurrency_rounds=1,
    cpu_window=1.0,
    startup_runs=1,
    latency_calls=10,
    streamed_calls=20,
    background_megabytes=10,
    rhythm_calls=3,
    rhythm_creations=2,
    first_plots=1,
    session_steps=(1, 10),
)


class BenchmarkError(RuntimeError):
    """A measurement could not be made (a call failed, a server did not start)."""


class RawKernelDiedError(BenchmarkError):
    """A raw kernel's process ended before it answered."""


# -- the machine ---------------------------------------------------------------------------

_PACKAGES = (
    "jupyter-exec-ext",
    "jupyter-exec-client",
    "jupyter_server",
    "jupyter_client",
    "ipykernel",
    "pyzmq",
    "tornado",
    "requests",
    "matplotlib",
)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, Python and package versions, load at start."""
    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
    }


# -- process hygiene -----------------------------------------------------------------------


class ProcessSweeper:
    """Finds every process this run started, so none is left behind whatever happens.

    All servers and kernels get a private temporary folder in their command line (servers
    through ``root_dir``, kernels through their connection file, as ``JUPYTER_RUNTIME_DIR``
    points there), so a sweep finds them even when their parent died first.
    """

    def __init__(self, marker: str) -> None:
        """Sweep processes whose command line contains ``marker``, and our descendants."""
        self.marker = marker

    def ours(self) -> list[psutil.Process]:
        """Live processes this run started (not this process itself)."""
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children(recursive=True):
                found[child.pid] = child
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info.get("cmdline") or []
            if process.pid != os.getpid() and any(self.marker in part for part in cmdline):
                found[process.pid] = process
        return list(found.values())

    def sweep(self, processes: list[psutil.Process] | None = None, grace: float = 3.0) -> int:
        """Terminate (then kill) ``processes`` or all of ours; return how many were alive."""
        targets = self.ours() if processes is None else processes
        alive = []
        for process in targets:
            with contextlib.suppress(psutil.Error):
                process.terminate()
                alive.append(process)
        _, still_alive = psutil.wait_procs(alive, timeout=grace)
        for process in still_alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(still_alive, timeout=grace)
        return len(alive)


def _raise_system_exit(signum: int, _frame: Any) -> None:
    # SIGTERM and SIGHUP unwind like Ctrl-C does, so every `finally` stops what it started.
    raise SystemExit(128 + signum)


# -- our path: a jupyter server with the extension -----------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """A ``jupyter server`` subprocess with the extension, started like LocalJupyterServer.

    It runs in a session of its own, so a Ctrl-C in the terminal reaches only this script,
    which then shuts the server down through the API (the server stops its kernels).
    """

    def __init__(
        self,
        work_dir: Path,
        sweeper: ProcessSweeper,
        *,
        kernel_pool: dict[str, int] | None = None,
        probe: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """Start a server in ``work_dir``; ``kernel_pool=None`` keeps the default pool;
        ``extra_args`` go on its command line."""
        self.sweeper = sweeper
        self.port = free_port()
        self.token = secrets.token_hex(32)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.root_dir = work_dir / f"server-{self.port}"
        self.root_dir.mkdir(parents=True)
        self.log_path = self.root_dir.parent / f"server-{self.port}.log"
        extensions = {"jupyter_exec_ext": True}
        if probe:
            extensions["bench_server_probe"] = True
        command = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            f"--ServerApp.jpserver_extensions={extensions!r}",
        ]
        if kernel_pool is not None:
            command.append(f"--AgentSessionManager.kernel_pool={kernel_pool!r}")
        command.extend(extra_args)
        env = dict(os.environ)
        if probe:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(BENCHMARKS_DIR), *filter(None, [env.get("PYTHONPATH")])]
            )
        self.started_at = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"
        self.ready_after = self._wait_until_ready()

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def _wait_until_ready(self, timeout: float = 120.0) -> float:
        """Poll ``/api/agent-sessions`` until the extension answers; seconds it took."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise BenchmarkError(f"The server exited at start:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                reply = self.http.get(f"{self.base_url}/api/agent-sessions", timeout=5)
                if reply.status_code == 200:
                    return time.perf_counter() - self.started_at
                if reply.status_code == 404:
                    raise BenchmarkError("The server runs but jupyter_exec_ext is not loaded")
            time.sleep(0.02)
        raise BenchmarkError(f"The server did not answer within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for error messages."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no log)"

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the server's API; the decoded JSON answer (None when empty)."""
        reply = self.http.request(
            method, f"{self.base_url}/api/{path}", timeout=REQUEST_TIMEOUT, **kwargs
        )
        if reply.status_code >= 400:
            raise BenchmarkError(f"{method} /api/{path}: {reply.status_code} {reply.text[:300]}")
        return reply.json() if reply.content else None

    def create_session(self) -> str:
        """Create an agent session (one REST call) and return its id."""
        return str(self.api("POST", "agent-sessions", json={})["id"])

    def delete_session(self, session_id: str) -> None:
        """Delete an agent session; its kernel is shut down."""
        self.api("DELETE", f"agent-sessions/{session_id}")

    def kernel_processes(self) -> list[psutil.Process]:
        """The server's descendants (its kernels)."""
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.pid).children(recursive=True)
        return []

    def rss_after_gc(self) -> int:
        """The server's RSS in bytes after a full garbage collection (needs ``probe=True``)."""
        return int(self.api("POST", "bench-probe/gc")["rss"])

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds the server process (not its kernels) has used."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def wait_for_pool(self, pool_size: int, timeout: float = 120.0) -> None:
        """Wait until the pool holds ``pool_size`` ready kernels (needs ``probe=True``)."""
        deadline = time.perf_counter() + timeout
        ready = 0
        while time.perf_counter() < deadline:
            ready = int(self.api("GET", "bench-probe/pool")["ready"])
            if ready >= pool_size:
                return
            time.sleep(0.1)
        raise BenchmarkError(
            f"The kernel pool did not fill within {timeout} s ({ready} of {pool_size} ready)"
        )

    def stop(self) -> None:
        """Shut the server down through its API, then sweep whatever is left of it."""
        if self.process.returncode is not None:
            return
        leftovers = [psutil.Process(self.pid), *self.kernel_processes()]
        with contextlib.suppress(requests.RequestException, BenchmarkError):
            self.api("POST", "shutdown")
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.sweeper.sweep(leftovers)
        self.process.wait()
        self.http.close()


class PeakRss:
    """The growth of a process's peak RSS from now on.

    On Linux, writing 5 to ``/proc/<pid>/clear_refs`` resets the process's RSS high-water
    mark (``VmHWM``), so the peak is exact; elsewhere a thread samples the RSS every 2 ms.
    """

    def __init__(self, pid: int) -> None:
        """Start watching process ``pid``."""
        self.process = psutil.Process(pid)
        self.start = self.process.memory_info().rss
        self._peak = self.start
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5", encoding="ascii")
            self.how = "VmHWM"
        except OSError:
            self.how = "sampling every 2 ms"
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            with contextlib.suppress(psutil.Error):
                self._peak = max(self._peak, self.process.memory_info().rss)

    def growth(self) -> int:
        """Bytes the peak RSS grew by; stops the sampling."""
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            return self._peak - self.start
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 - self.start
        raise BenchmarkError("No VmHWM in /proc/<pid>/status")


@dataclass
class CallResult:
    """What one call of our path gave back."""

    output_chars: int
    files: list[Path]


class OurSession(Protocol):
    """One agent session driven by a client; ``run`` raises unless the code succeeded."""

    def run(self, code: str) -> CallResult:
        """Run code; images end up as files in the session's output folder."""

    def close(self) -> None:
        """Delete the session."""


class RestSession:
    """An agent session driven with ``requests.Session`` against the REST API directly.

    Used when the client package cannot be used. It does what the client does per call: one
    POST, and one GET per image to put it on the local disk.
    """

    def __init__(self, server: ServerProcess, output_dir: Path) -> None:
        """Create a session on ``server``; images go to ``output_dir``."""
        self.base_url = server.base_url
        self.output_dir = output_dir
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {server.token}"
        reply = self.http.post(
            f"{self.base_url}/api/agent-sessions", json={}, timeout=REQUEST_TIMEOUT
        )
        if reply.status_code != 201:
            raise BenchmarkError(f"Session creation failed: {reply.status_code} {reply.text}")
        self.session_id = reply.json()["id"]
        self.closed = False

    def run(self, code: str) -> CallResult:
        """POST the code; download every image the result names."""
        reply = self.http.post(
            f"{self.base_url}/api/agent-sessions/{self.session_id}/execute",
            json={"code": code},
            timeout=REQUEST_TIMEOUT,
        )
        if reply.status_code != 200:
            raise BenchmarkError(f"Execute failed: {reply.status_code} {reply.text[:300]}")
        result = reply.json()
        if result["status"] != "ok":
            raise BenchmarkError(f"Code failed: {result['output'][:300]}")
        files = []
        for stored in result["files"]:
            if not stored["mime_type"].startswith("image/"):
                continue
            download = self.http.get(f"{self.base_url}{stored['url']}", timeout=REQUEST_TIMEOUT)
            download.raise_for_status()
            suffix = "." + stored["mime_type"].split("/")[1].split("+")[0]
            path = self.output_dir / f"{uuid.uuid4().hex}{suffix}"
            path.write_bytes(download.content)
            files.append(path)
        return CallResult(len(result["output"]), files)

    def close(self) -> None:
        """Delete the session (once)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(requests.RequestException):
            self.http.delete(
                f"{self.base_url}/api/agent-sessions/{self.session_id}", timeout=REQUEST_TIMEOUT
            )
        self.http.close()


@dataclass
class _CodeBlock:
    """Stand-in for the client's CodeBlock when it exports none (same two fields)."""

    code: str
    language: str


class ExecutorSession:
    """An agent session driven by ``jupyter_exec_client.JupyterCodeExecutor``."""

    def __init__(self, client: ModuleType, server: ServerProcess, output_dir: Path) -> None:
        """Open an executor on ``server`` writing images to ``output_dir``."""
        self.code_block = getattr(client, "CodeBlock", _CodeBlock)
        info = client.JupyterConnectionInfo(
            host="127.0.0.1", use_https=False, port=server.port, token=server.token
        )
        self.executor = client.JupyterCodeExecutor(
            info, timeout=int(REQUEST_TIMEOUT), output_dir=output_dir
        )
        self.closed = False

    def run(self, code: str) -> CallResult:
        """Execute one code block through the executor."""
        result = self.executor.execute_code_blocks([self.code_block(code=code, language="python")])
        if result.exit_code != 0:
            raise BenchmarkError(f"Code failed: {result.output[:300]}")
        return CallResult(len(result.output), [Path(p) for p in result.output_files])

    def close(self) -> None:
        """Stop the executor (once; its session is deleted)."""
        if not self.closed:
            self.closed = True
            self.executor.stop()


class OurPath:
    """Opens sessions with the client package when it works, else over REST directly."""

    def __init__(self) -> None:
        """Import the client; :meth:`check` decides whether it is used."""
        self.client: ModuleType | None = None
        self.description = "REST API via requests.Session (jupyter_exec_client not importable)"
        try:
            self.client = importlib.import_module("jupyter_exec_client")
        except ImportError as e:
            self.description = f"REST API via requests.Session (jupyter_exec_client: {e})"

    def check(self, server: ServerProcess, output_dir: Path) -> None:
        """Try the client on a real call and a plot; fall back to REST if either fails."""
        if self.client is None:
            return
        try:
            session = ExecutorSession(self.client, server, output_dir)
            try:
                session.run(CALL_CODE)
                files = session.run(PLOT_WARMUP_CODE).files
                if len(files) != 1 or not files[0].is_file():
                    raise BenchmarkError(f"a plot gave files {files}, not one PNG on disk")
            finally:
                session.close()
        except Exception as e:  # noqa: BLE001 - any failure of the client means: fall back
            self.client = None
            self.description = (
                f"REST API via requests.Session (jupyter_exec_client failed: "
                f"{type(e).__name__}: {str(e)[:200]})"
            )
            return
        self.description = "jupyter_exec_client.JupyterCodeExecutor"

    def open(self, server: ServerProcess, output_dir: Path) -> OurSession:
        """A new session on ``server``."""
        if self.client is not None:
            return ExecutorSession(self.client, server, output_dir)
        return RestSession(server, output_dir)


# -- the raw floor: jupyter_client in this process -----------------------------------------


@dataclass
class RawOutput:
    """What one raw execution printed and displayed."""

    text: str = ""
    images: list[str] = field(default_factory=list)


class RawKernel:
    """An ipykernel driven by jupyter_client's BlockingKernelClient in this process."""

    def __init__(self) -> None:
        """Launch the kernel process and open shell and IOPub; see :meth:`wait_until_ready`."""
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = self.manager.client()
        self.client.allow_stdin = False
        self.client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        self.closed = False

    @classmethod
    def start(cls) -> RawKernel:
        """Launch a kernel and wait until it answers."""
        kernel = cls()
        try:
            kernel.wait_until_ready()
        except BaseException:
            kernel.shutdown()
            raise
        return kernel

    def wait_until_ready(self, timeout: float = 120.0) -> None:
        """Send kernel_info until its idle status arrives on IOPub and its reply on shell.

        The same proof of readiness as our server's: a message seen on IOPub shows that the
        subscription is in place, so no output of the first call can be lost.
        """
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            msg_id = self.client.kernel_info()
            with contextlib.suppress(Empty):
                self._wait(msg_id, RawOutput(), timeout=1.0)
                return
            if not self.manager.is_alive():
                raise RawKernelDiedError("A raw kernel died while starting")
        raise BenchmarkError(f"A raw kernel did not answer within {timeout} s")

    def execute(self, code: str, on_stream: Callable[[str], None] | None = None) -> RawOutput:
        """Run code; wait for its idle status on IOPub and its shell reply.

        ``on_stream`` is called with each printed text as it arrives on IOPub.
        """
        msg_id = self.client.execute(
            code, silent=False, store_history=True, allow_stdin=False, stop_on_error=True
        )
        output = RawOutput()
        reply = self._wait(msg_id, output, timeout=REQUEST_TIMEOUT, on_stream=on_stream)
        if reply["content"]["status"] != "ok":
            raise BenchmarkError(f"Raw code failed: {reply['content']}")
        return output

    def _wait(
        self,
        msg_id: str,
        output: RawOutput,
        timeout: float,
        on_stream: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Collect IOPub output of ``msg_id`` until idle, then return its shell reply."""
        deadline = time.perf_counter() + timeout
        texts = []
        while True:
            msg = self.client.get_iopub_msg(timeout=max(deadline - time.perf_counter(), 0.001))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msg_type, content = msg["header"]["msg_type"], msg["content"]
            if msg_type == "status" and content["execution_state"] == "idle":
                break
            if msg_type == "stream":
                texts.append(content["text"])
                if on_stream is not None:
                    on_stream(content["text"])
            elif msg_type in ("display_data", "execute_result") and "image/png" in content["data"]:
                output.images.append(content["data"]["image/png"])
        output.text = "".join(texts)
        while True:
            reply = self.client.get_shell_msg(timeout=max(deadline - time.perf_counter(), 0.001))
            if reply["parent_header"].get("msg_id") == msg_id:
                return dict(reply)

    def shutdown(self) -> None:
        """Close the channels and shut the kernel down (once)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        with contextlib.suppress(Exception):
            self.manager.shutdown_kernel(now=True)


def raw_plot_to_disk(kernel: RawKernel, output_dir: Path) -> Path:
    """The floor of a plot end to end: execute, decode the PNG, write it to disk."""
    images = kernel.execute(PLOT_CODE).images
    if len(images) != 1:
        raise BenchmarkError(f"The raw plot gave {len(images)} PNGs, not one")
    path = output_dir / f"{uuid.uuid4().hex}.png"
    path.write_bytes(base64.b64decode(images[0]))
    return path


def start_raw_kernels(count: int) -> list[RawKernel]:
    """Launch ``count`` kernels at once (they boot in parallel), then wait for each."""
    kernels: list[RawKernel] = []
    try:
        for _ in range(count):
            kernels.append(RawKernel())
        for index, kernel in enumerate(kernels):
            try:
                kernel.wait_until_ready()
            except RawKernelDiedError:
                # Kernels launched together can pick the same port ("Address already in
                # use"); our server starts such a kernel once more, and so does the floor.
                kernel.shutdown()
                kernels[index] = RawKernel.start()
    except BaseException:
        for kernel in kernels:
            kernel.shutdown()
        raise
    return kernels


# -- statistics and the report -------------------------------------------------------------


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary(samples: list[float]) -> dict[str, Any]:
    """Median, p95, min and max of samples, rounded for the JSON."""
    return {
        "n": len(samples),
        "median": round(statistics.median(samples), 4),
        "p95": round(percentile(samples, 0.95), 4),
        "min": round(min(samples), 4),
        "max": round(max(samples), 4),
    }


def milliseconds(seconds: list[float]) -> list[float]:
    """Seconds to milliseconds."""
    return [s * 1000 for s in seconds]


@dataclass(frozen=True)
class Target:
    """A goal: ``ours <= limit`` (``absolute``), or on the ratio ours/raw (``<=`` or ``>=``)."""

    kind: str  # "max" | "ratio_max" | "ratio_min"
    limit: float
    unit: str = ""
    #: What the ratio is against: the raw floor, or another path of ours (``unstreamed``).
    against: str = "raw"

    def text(self) -> str:
        """The goal as the table shows it."""
        if self.kind == "max":
            return f"< {self.limit:g} {self.unit}".strip()
        sign = "<=" if self.kind == "ratio_max" else ">="
        return f"{sign} {self.limit:g}x {self.against}"


@dataclass
class Metric:
    """One line of the table."""

    key: str
    label: str
    unit: str
    ours: float | None
    raw: float | None = None
    target: Target | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """ours / raw, when both exist."""
        if self.ours is None or not self.raw:
            return None
        return self.ours / self.raw

    @property
    def passed(self) -> bool | None:
        """Whether the target is met; None without a target or a value."""
        if self.target is None or self.ours is None:
            return None
        if self.target.kind == "max":
            return self.ours < self.target.limit
        ratio = self.ratio
        if ratio is None:
            return None
        if self.target.kind == "ratio_max":
            return ratio <= self.target.limit
        return ratio >= self.target.limit

    def as_json(self) -> dict[str, Any]:
        """The metric for the JSON report."""
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "ours": _round(self.ours),
            "raw": _round(self.raw),
            "ratio": _round(self.ratio),
            "target": self.target.text() if self.target else None,
            "passed": self.passed,
            "details": self.details,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def render_table(metrics: list[Metric], header: list[str]) -> str:
    """The report as a fixed-width text table with the machine in its header."""
    rows = [("metric", "ours", "raw floor", "ratio", "target", "result")]
    for metric in metrics:
        ratio = metric.ratio
        verdict = {True: "pass", False: "FAIL", None: "info"}[metric.passed]
        rows.append(
            (
                metric.label,
                _format(metric.ours, metric.unit),
                _format(metric.raw, metric.unit),
                "-" if ratio is None else f"{ratio:.2f}x",
                metric.target.text() if metric.target else "-",
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [*header, ""]
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


# -- the run -------------------------------------------------------------------------------


def progress(message: str) -> None:
    """Say what the benchmark is doing (on stderr, so stdout is the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(action: Callable[[], Any]) -> float:
    """Seconds ``action`` took."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run_in_threads(workers: list[Callable[[], None]]) -> float:
    """Run each worker in its own thread, all released at once; seconds until all are done."""
    barrier = threading.Barrier(len(workers) + 1)
    errors: list[BaseException] = []

    def body(worker: Callable[[], None]) -> None:
        barrier.wait()
        try:
            worker()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise BenchmarkError(f"{len(errors)} worker(s) failed; first: {errors[0]!r}")
    return elapsed


class Benchmark:
    """Runs every measurement and collects the table's lines."""

    def __init__(self, settings: Settings, work_dir: Path, sweeper: ProcessSweeper) -> None:
        """Measure with ``settings``; servers, kernels and files live under ``work_dir``."""
        self.settings = settings
        self.work_dir = work_dir
        self.sweeper = sweeper
        self.ours = OurPath()
        self.metrics: list[Metric] = []
        self.output_dir = work_dir / "client-output"
        self.output_dir.mkdir()

    def add(self, metric: Metric) -> None:
        """Record a metric and show it at once."""
        self.metrics.append(metric)
        progress(
            f"  {metric.label}: ours {_format(metric.ours, metric.unit)}, "
            f"raw {_format(metric.raw, metric.unit)}"
        )

    def run(self, stack: contextlib.ExitStack) -> None:
        """Every phase in turn; ``stack`` stops servers and kernels whatever happens."""
        self.measure_local_startup()

        progress("Starting a server with the default kernel pool, and a raw kernel")
        pooled_server = ServerProcess(self.work_dir, self.sweeper, probe=True)
        stack.callback(pooled_server.stop)
        raw = RawKernel.start()
        stack.callback(raw.shutdown)
        pooled_server.wait_for_pool(DEFAULT_POOL_SIZE)
        self.ours.check(pooled_server, self.output_dir)
        progress(f"Our path is driven by: {self.ours.description}")
        session = self.ours.open(pooled_server, self.output_dir)
        stack.callback(session.close)
        self.measure_roundtrip(session, raw)
        self.measure_plot(session, raw)
        self.measure_prints(session, raw)
        if isinstance(session, ExecutorSession):
            self.measure_print_latency(session, raw)
            self.measure_streamed_roundtrip(session)
            self.measure_background_memory(session, pooled_server)
        session.close()
        self.measure_pool_creation(pooled_server)
        self.measure_huge_output_memory(pooled_server)
        pooled_server.stop()
        raw.shutdown()

        progress("Starting a server without a kernel pool (with the gc probe)")
        cold_server = ServerProcess(self.work_dir, self.sweeper, kernel_pool={}, probe=True)
        stack.callback(cold_server.stop)
        self.measure_cold_creation(cold_server)
        self.measure_many_sessions(cold_server, stack)
        cold_server.stop()
        self.measure_workspace_tracking(stack)
        self.measure_sandbox(stack)

    def run_live(self, stack: contextlib.ExitStack) -> None:
        """Only the live-output lines: streamed latency and cost, a big background run."""
        progress("Starting a server (with the gc probe) and a raw kernel for live output")
        server = ServerProcess(self.work_dir, self.sweeper, kernel_pool={}, probe=True)
        stack.callback(server.stop)
        raw = RawKernel.start()
        stack.callback(raw.shutdown)
        self.ours.check(server, self.output_dir)
        progress(f"Our path is driven by: {self.ours.description}")
        if self.ours.client is None:
            raise BenchmarkError("The live-output lines need jupyter_exec_client")
        session = ExecutorSession(self.ours.client, server, self.output_dir)
        stack.callback(session.close)
        self.measure_print_latency(session, raw)
        self.measure_streamed_roundtrip(session)
        self.measure_background_memory(session, server)

    def run_mcp(self, stack: contextlib.ExitStack) -> None:
        """Only the MCP lines: ``x=1`` over MCP (HTTP and stdio) against REST, and the start
        of ``jupyter-exec mcp`` to its first tool result."""
        progress("Starting a server for the MCP lines")
        server = ServerProcess(self.work_dir, self.sweeper, kernel_pool={})
        stack.callback(server.stop)
        asyncio.run(self._measure_mcp(server))

    async def _measure_mcp(self, server: ServerProcess) -> None:
        """The MCP lines, in one event loop: the REST call blocks it (nothing else runs)."""
        import httpx2  # noqa: PLC0415 - the [mcp] extra, needed by these lines only
        from mcp.client.session import ClientSession  # noqa: PLC0415
        from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: PLC0415
        from mcp.client.streamable_http import streamable_http_client  # noqa: PLC0415

        command = str(Path(sys.executable).with_name("jupyter-exec"))
        env = {**os.environ, "JUPYTER_EXEC_URL": server.base_url + "/"}
        env["JUPYTER_EXEC_TOKEN"] = server.token
        rest_session = server.create_session()
        calls = self.settings.roundtrip_calls
        progress(f"MCP x=1 over HTTP and stdio against REST: {calls} calls each")
        async with contextlib.AsyncExitStack() as stack:
            http_client = await stack.enter_async_context(
                httpx2.AsyncClient(headers={"Authorization": f"token {server.token}"}, timeout=60)
            )
            read, write, *_ = await stack.enter_async_context(
                streamable_http_client(
                    f"{server.base_url}/agent-sessions/mcp", http_client=http_client
                )
            )
            http = await stack.enter_async_context(ClientSession(read, write))
            await http.initialize()
            created = await http.call_tool("create_session", {})
            http_session = created.content[0].text.split()[1]  # type: ignore[union-attr]
            parameters = StdioServerParameters(command=command, args=["mcp"], env=env)
            read, write = await stack.enter_async_context(stdio_client(parameters))
            stdio = await stack.enter_async_context(ClientSession(read, write))
            await stdio.initialize()

            def rest() -> None:
                server.api(
                    "POST", f"agent-sessions/{rest_session}/execute", json={"code": CALL_CODE}
                )

            async def over(session: Any, arguments: dict[str, str]) -> float:
                started = time.perf_counter()
                result = await session.call_tool("execute", {"code": CALL_CODE, **arguments})
                if result.is_error:
                    raise BenchmarkError(f"MCP execute failed: {result.content}")
                return time.perf_counter() - started

            # The same tools/call as one plain POST (requests, as the REST line): the
            # server's share of the cost, without the SDK client's.
            plain = requests.Session()
            plain.headers.update(
                {
                    "Authorization": f"token {server.token}",
                    "Accept": "application/json, text/event-stream",
                    "Content-Type": "application/json",
                }
            )
            plain_url = f"{server.base_url}/agent-sessions/mcp"
            opened = plain.post(
                plain_url,
                data=json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "1"}}}),
                timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
            plain.headers["mcp-session-id"] = opened.headers["mcp-session-id"]
            plain.headers["mcp-protocol-version"] = "2025-11-25"
            plain.post(
                plain_url,
                data='{"jsonrpc": "2.0", "method": "notifications/initialized"}',
                timeout=REQUEST_TIMEOUT,
            )
            call = json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                    "name": "execute", "arguments": {"code": CALL_CODE, "session_id": http_session}}}
            )  # fmt: skip

            def plain_call() -> None:
                answer = plain.post(plain_url, data=call, timeout=REQUEST_TIMEOUT)
                if "status: ok" not in answer.text:
                    raise BenchmarkError(f"MCP tools/call failed: {answer.text[:300]}")

            for _ in range(self.settings.warmup_calls):
                rest()
                plain_call()
                await over(http, {"session_id": http_session})
                await over(stdio, {})
            times: dict[str, list[float]] = {"rest": [], "plain": [], "http": [], "stdio": []}
            while len(times["rest"]) < calls:
                block = min(self.settings.roundtrip_block, calls - len(times["rest"]))
                times["rest"].extend(timed(rest) for _ in range(block))
                times["plain"].extend(timed(plain_call) for _ in range(block))
                for _ in range(block):
                    times["http"].append(await over(http, {"session_id": http_session}))
                for _ in range(block):
                    times["stdio"].append(await over(stdio, {}))
        ms = {name: milliseconds(samples) for name, samples in times.items()}
        details = {name: summary(samples) for name, samples in ms.items()}
        for name, label in (("http", "Streamable HTTP"), ("stdio", "stdio")):
            self.add(
                Metric(
                    f"mcp_{name}_roundtrip_median",
                    f"MCP execute {CALL_CODE} over {label} vs REST, median",
                    "ms",
                    statistics.median(ms[name]),
                    statistics.median(ms["rest"]),
                    Target("ratio_max", 1.5),
                    details,
                )
            )
        self.add(
            Metric(
                "mcp_http_plain_roundtrip_median",
                f"MCP execute {CALL_CODE} over HTTP as one plain POST (no SDK client), median",
                "ms",
                statistics.median(ms["plain"]),
                statistics.median(ms["rest"]),
                details=details,
            )
        )
        await self._measure_mcp_start(command, env)

    async def _measure_mcp_start(self, command: str, env: dict[str, str]) -> None:
        """``jupyter-exec mcp`` from its start to its first ``execute`` result, pointed at
        a running server (``env``) and starting its own."""
        from mcp.client.session import ClientSession  # noqa: PLC0415
        from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: PLC0415

        local_env = {k: v for k, v in env.items() if not k.startswith("JUPYTER_EXEC_")}
        environments = {"url": env, "local": local_env}
        starts: dict[str, list[float]] = {"url": [], "local": []}
        progress("jupyter-exec mcp: start to first tool result")
        for _ in range(max(1, self.settings.startup_runs // 2)):
            for mode, own_env in environments.items():
                parameters = StdioServerParameters(command=command, args=["mcp"], env=own_env)
                started = time.perf_counter()
                async with (
                    stdio_client(parameters) as (read, write),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    await session.call_tool("execute", {"code": CALL_CODE})
                    starts[mode].append(time.perf_counter() - started)
        for mode, label in (("url", "a running server"), ("local", "its own local server")):
            self.add(
                Metric(
                    f"mcp_stdio_start_{mode}",
                    f"jupyter-exec mcp start to first execute result, {label}",
                    "s",
                    statistics.median(starts[mode]),
                    details={"runs_s": [round(t, 3) for t in starts[mode]]},
                )
            )

    # -- the agent's rhythm: calls after idle, the first plot ------------------------------

    def run_rhythm(self, stack: contextlib.ExitStack) -> None:
        """The after-idle lines: x=1 and a pooled session after 2 s idle, the first plot."""
        progress("Starting a server with the default pool and preload, and a raw kernel")
        server = ServerProcess(self.work_dir, self.sweeper, probe=True)
        stack.callback(server.stop)
        raw = RawKernel.start()
        stack.callback(raw.shutdown)
        server.wait_for_pool(DEFAULT_POOL_SIZE)
        self.ours.check(server, self.output_dir)
        if self.ours.client is None:
            raise BenchmarkError(f"The rhythm lines need the client: {self.ours.description}")
        progress(f"Our path is driven by: {self.ours.description}")
        session = ExecutorSession(self.ours.client, server, self.output_dir)
        stack.callback(session.close)
        raw_after_idle = self.measure_call_after_idle(session, raw)
        session.close()
        raw.shutdown()
        self.measure_creation_after_idle(server, raw_after_idle)
        self.measure_first_plot(server)

    def _idle(self) -> None:
        time.sleep(self.settings.idle_pause)

    def measure_call_after_idle(self, session: ExecutorSession, raw: RawKernel) -> list[float]:
        """x=1 after idle, ours and raw interleaved; return the raw samples (ms)."""
        calls = self.settings.rhythm_calls
        pause = self.settings.idle_pause
        progress(f"x=1 after {pause:g} s idle: {calls} calls each, interleaved")
        for _ in range(self.settings.warmup_calls):
            session.run(CALL_CODE)
            raw.execute(CALL_CODE)
        ours, floor = [], []
        for _ in range(calls):
            self._idle()
            ours.append(timed(lambda: session.run(CALL_CODE)))
            self._idle()
            floor.append(timed(lambda: raw.execute(CALL_CODE)))
        ours_ms, floor_ms = milliseconds(ours), milliseconds(floor)
        self.add(
            Metric(
                "roundtrip_after_idle",
                f"x=1 after {pause:g} s idle, median",
                "ms",
                statistics.median(ours_ms),
                statistics.median(floor_ms),
                target=Target("ratio_max", 1.3),
                details={"ours": summary(ours_ms), "raw": summary(floor_ms), "idle_s": pause},
            )
        )
        return floor_ms

    def measure_creation_after_idle(self, server: ServerProcess, raw_ms: list[float]) -> None:
        """A pooled session created by a new executor after idle, against raw x=1 after idle."""
        assert self.ours.client is not None
        client = self.ours.client
        count = self.settings.rhythm_creations
        pause = self.settings.idle_pause
        progress(f"Pooled sessions after {pause:g} s idle: {count} executors created")
        info = client.JupyterConnectionInfo(
            host="127.0.0.1", use_https=False, port=server.port, token=server.token
        )
        durations = []
        for _ in range(count):
            server.wait_for_pool(DEFAULT_POOL_SIZE)
            self._idle()
            started = time.perf_counter()
            executor = client.JupyterCodeExecutor(info, output_dir=self.output_dir)
            durations.append(time.perf_counter() - started)
            executor.stop()
        durations_ms = milliseconds(durations)
        self.add(
            Metric(
                "session_from_pool_after_idle",
                f"pooled session after {pause:g} s idle (vs raw x=1 after idle)",
                "ms",
                statistics.median(durations_ms),
                statistics.median(raw_ms),
                target=Target("ratio_max", 1.5),
                details={
                    "how": "JupyterCodeExecutor(...) after idle, the pool refilled before",
                    **summary(durations_ms),
                },
            )
        )

    def measure_first_plot(self, server: ServerProcess) -> None:
        """A new session's first call importing matplotlib and plotting, request to PNG on
        disk, against the same first call on a freshly started raw kernel."""
        assert self.ours.client is not None
        client = self.ours.client
        count = self.settings.first_plots
        progress(f"First plot of a new session vs a fresh raw kernel: {count} each")
        info = client.JupyterConnectionInfo(
            host="127.0.0.1", use_https=False, port=server.port, token=server.token
        )
        block = getattr(client, "CodeBlock", _CodeBlock)(code=PLOT_WARMUP_CODE, language="python")
        ours, floor, creations = [], [], []
        pooled_uss: list[float] = []
        for _ in range(count):
            server.wait_for_pool(DEFAULT_POOL_SIZE)
            pooled_uss.append(sum(_uss(p) for p in server.kernel_processes()) / DEFAULT_POOL_SIZE)
            self._idle()
            started = time.perf_counter()
            executor = client.JupyterCodeExecutor(info, output_dir=self.output_dir)
            created = time.perf_counter()
            try:
                result = executor.execute_code_blocks([block])
                ours.append(time.perf_counter() - created)
            finally:
                executor.stop()
            creations.append(created - started)
            if result.exit_code != 0 or len(result.output_files) != 1:
                raise BenchmarkError(f"Our first plot failed: {result.output[:300]}")
            kernel = RawKernel.start()
            try:
                # The pool's refill must not load the machine under the raw side's plot.
                server.wait_for_pool(DEFAULT_POOL_SIZE)
                self._idle()
                started = time.perf_counter()
                raw_plot_to_disk_first(kernel, self.output_dir)
                floor.append(time.perf_counter() - started)
            finally:
                kernel.shutdown()
        ours_ms, floor_ms = milliseconds(ours), milliseconds(floor)
        self.add(
            Metric(
                "first_plot",
                "first plot of a new session (vs a fresh raw kernel)",
                "ms",
                statistics.median(ours_ms),
                statistics.median(floor_ms),
                target=Target("ratio_max", 0.25),
                details={
                    "ours": summary(ours_ms),
                    "raw": summary(floor_ms),
                    "session_creation_ms": summary(milliseconds(creations)),
                    "pooled_kernel_uss_mb": round(statistics.median(pooled_uss) / 1e6, 1),
                },
            )
        )
        self.measure_pool_memory(server, statistics.median(pooled_uss))

    def measure_pool_memory(self, server: ServerProcess, preloaded_uss: float) -> None:
        """What a pooled kernel holds with the default preload, against one without."""
        plain = ServerProcess(
            self.work_dir,
            self.sweeper,
            probe=True,
            extra_args=("--AgentSessionManager.kernel_pool_preload=[]",),
        )
        try:
            plain.wait_for_pool(DEFAULT_POOL_SIZE)
            time.sleep(1.0)
            plain_uss = sum(_uss(p) for p in plain.kernel_processes()) / DEFAULT_POOL_SIZE
        finally:
            plain.stop()
        self.add(
            Metric(
                "pooled_kernel_memory",
                "memory of a pooled kernel, preloaded (vs no preload)",
                "MB",
                preloaded_uss / 1e6,
                plain_uss / 1e6,
                details={"pool_size": DEFAULT_POOL_SIZE, "measure": "USS per kernel process"},
            )
        )

    # -- hundreds of idle sessions --------------------------------------------------------

    def run_many_sessions(self, stack: contextlib.ExitStack) -> None:
        """Idle sessions raised step by step: idle CPU, create/list/x=1 latency, memory."""
        steps = self.settings.session_steps
        progress(f"Starting a server (no pool) for up to {steps[-1]} idle sessions")
        server = ServerProcess(
            self.work_dir,
            self.sweeper,
            kernel_pool={},
            probe=True,
            extra_args=("--AgentSessionManager.max_sessions=0",),
        )
        stack.callback(server.stop)
        self.ours.check(server, self.output_dir)
        sessions: list[OurSession] = []
        rss_empty = server.rss_after_gc()
        baseline: dict[str, float] = {}
        per_session_mb = 0.0
        for step in steps:
            missing = step - len(sessions)
            progress(f"  raising to {step} idle sessions")
            with ThreadPoolExecutor(SETUP_PARALLELISM) as pool:
                opened = list(
                    pool.map(lambda _: self.ours.open(server, self.output_dir), range(missing))
                )
                list(pool.map(lambda s: s.run(CALL_CODE), opened))
            for session in opened:
                stack.callback(session.close)
            sessions.extend(opened)
            time.sleep(2.0)
            before = server.cpu_seconds()
            time.sleep(self.settings.cpu_window)
            cpu = (server.cpu_seconds() - before) / self.settings.cpu_window * 100
            latencies = self._many_latencies(server, sessions[0])
            kernels = server.kernel_processes()
            kernel_uss = statistics.median(_uss(p) for p in kernels) if kernels else 0.0
            server_share = (server.rss_after_gc() - rss_empty) / step
            per_session_mb = (kernel_uss + server_share) / 1e6
            if not baseline:
                baseline = latencies
            self.add(
                Metric(
                    f"idle_sessions_{step}",
                    f"{step} idle sessions: server CPU",
                    "% core",
                    cpu,
                    target=Target("max", 1.0, "% core"),
                    details={
                        "latency_ms": {k: round(v, 2) for k, v in latencies.items()},
                        "latency_vs_one_session": {
                            k: round(v / baseline[k], 2) for k, v in latencies.items()
                        },
                        "kernel_uss_mb": round(kernel_uss / 1e6, 1),
                        "server_share_mb": round(server_share / 1e6, 3),
                        "memory_per_session_mb": round(per_session_mb, 1),
                    },
                )
            )
            for name, value in latencies.items():
                if step != steps[0]:
                    self.add(
                        Metric(
                            f"idle_sessions_{step}_{name}",
                            f"{name} with {step} idle sessions (vs 1 session; no pool)",
                            "ms",
                            value,
                            baseline[name],
                            target=Target("ratio_max", 1.2, against="1 session"),
                        )
                    )
        available = psutil.virtual_memory().available
        self.add(
            Metric(
                "sessions_per_gb",
                "idle sessions per GB (kernel USS + server share)",
                "sessions",
                1e3 / per_session_mb if per_session_mb else None,
                details={
                    "memory_per_session_mb": round(per_session_mb, 1),
                    "more_that_fit_now": int(available / (per_session_mb * 1e6))
                    if per_session_mb
                    else None,
                },
            )
        )

    def _many_latencies(self, server: ServerProcess, session: OurSession) -> dict[str, float]:
        """Median ms of a create (+delete), a list and x=1 on one of the idle sessions."""
        samples: dict[str, list[float]] = {"create": [], "list": [], "x=1": []}
        for _ in range(max(3, self.settings.rhythm_creations // 2)):
            session_id = ""

            def create() -> None:
                nonlocal session_id
                session_id = server.create_session()

            samples["create"].append(timed(create))
            server.delete_session(session_id)
            samples["list"].append(timed(lambda: server.api("GET", "agent-sessions")))
        for _ in range(self.settings.latency_calls // 2):
            samples["x=1"].append(timed(lambda: session.run(CALL_CODE)))
        return {name: statistics.median(milliseconds(values)) for name, values in samples.items()}

    # -- phases ----------------------------------------------------------------------------

    def measure_print_latency(self, session: ExecutorSession, raw: RawKernel) -> None:
        """From a ``print`` in the kernel to the client's ``on_stdout`` (and to the raw
        client's IOPub read), on one machine's clock."""
        calls = self.settings.latency_calls
        progress(f"print -> on_stdout latency: {calls} calls each")
        # The sleep keeps the call running: the line travels alone, as in a long cell.
        code = "import time\nprint(repr(time.time()), flush=True)\ntime.sleep(0.02)"
        ours: list[float] = []
        floor: list[float] = []

        def measure(into: list[float]) -> Callable[[str], None]:
            # A loaded kernel may send the printed line in two messages (its periodic flush
            # falls between print's two writes): the line counts once it is whole.
            line: list[str] = []

            def received(text: str) -> None:
                line.append(text)
                if text.endswith("\n"):
                    into.append(time.time() - float("".join(line)))
                    line.clear()

            return received

        for _ in range(self.settings.warmup_calls):
            session.executor.run(code)
            raw.execute(code)
        for _ in range(calls):
            session.executor.run(code, on_stdout=measure(ours))
            raw.execute(code, on_stream=measure(floor))
        ours_ms, floor_ms = milliseconds(ours), milliseconds(floor)
        self.add(
            Metric(
                "print_latency_median",
                "print -> on_stdout latency, median",
                "ms",
                statistics.median(ours_ms),
                statistics.median(floor_ms),
                Target("ratio_max", 1.5),
                {"ours": summary(ours_ms), "raw": summary(floor_ms)},
            )
        )

    def measure_streamed_roundtrip(self, session: ExecutorSession) -> None:
        """``x=1`` through ``run`` (streamed) against ``execute_code_blocks``, interleaved."""
        settings = self.settings
        calls = settings.streamed_calls
        progress(f"{CALL_CODE!r} streamed vs unstreamed: {calls} calls each")
        for _ in range(settings.warmup_calls):
            session.executor.run(CALL_CODE)
            session.run(CALL_CODE)
        streamed: list[float] = []
        blocking: list[float] = []
        while len(streamed) < calls:
            block = min(settings.roundtrip_block, calls - len(streamed))
            streamed.extend(timed(lambda: session.executor.run(CALL_CODE)) for _ in range(block))
            blocking.extend(timed(lambda: session.run(CALL_CODE)) for _ in range(block))
        streamed_ms, blocking_ms = milliseconds(streamed), milliseconds(blocking)
        self.add(
            Metric(
                "streamed_roundtrip_median",
                f"{CALL_CODE} streamed (vs unstreamed), median",
                "ms",
                statistics.median(streamed_ms),
                statistics.median(blocking_ms),
                Target("ratio_max", 1.1, against="unstreamed"),
                {"streamed": summary(streamed_ms), "unstreamed": summary(blocking_ms)},
            )
        )

    def measure_background_memory(self, session: ExecutorSession, server: ServerProcess) -> None:
        """The server's RSS while a background run prints ``background_megabytes`` MB."""
        megabytes = self.settings.background_megabytes
        progress(f"Background run printing {megabytes} MB: server RSS")
        session.run(CALL_CODE)
        baseline = server.rss_after_gc()
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            process = psutil.Process(server.pid)
            while not done.wait(0.02):
                peak = max(peak, process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            code = f"for _ in range({megabytes}):\n    print('x' * 999_999)"
            execution = session.executor.start(code, timeout=REQUEST_TIMEOUT)
            result = execution.wait(timeout=REQUEST_TIMEOUT)
        finally:
            done.set()
            sampler.join()
        if result.exit_code != 0:
            raise BenchmarkError(f"The background run failed: {result.output[:300]}")
        after = server.rss_after_gc()
        growth = (peak - baseline) / MEGABYTE
        self.add(
            Metric(
                "background_print_rss",
                f"background run printing {megabytes} MB: server RSS growth",
                "MB",
                growth,
                target=Target("max", 50.0, "MB"),
                details={
                    "baseline_mb": baseline / MEGABYTE,
                    "peak_mb": peak / MEGABYTE,
                    "after_gc_mb": after / MEGABYTE,
                },
            )
        )

    def measure_local_startup(self) -> None:
        """LocalJupyterServer() + executor + first execute of ``1``, absolute."""
        progress("Local server start-up until the first call ran")
        totals, parts = [], []
        for _ in range(self.settings.startup_runs):
            breakdown = self._one_startup()
            totals.append(breakdown["total"])
            parts.append(breakdown)
            time.sleep(0.5)
        how = (
            "jupyter_exec_client.LocalJupyterServer + JupyterCodeExecutor"
            if self._client_has_local_server()
            else "jupyter server subprocess + REST (client package not usable)"
        )
        self.add(
            Metric(
                "local_server_ready",
                "local server start -> first result",
                "s",
                statistics.median(totals),
                target=Target("max", 2.0, "s"),
                details={"how": how, "runs": parts, **summary(totals)},
            )
        )

    def _client_has_local_server(self) -> bool:
        client = self.ours.client
        return client is not None and all(
            hasattr(client, name) for name in ("LocalJupyterServer", "JupyterCodeExecutor")
        )

    def _one_startup(self) -> dict[str, float]:
        started = time.perf_counter()
        if self._client_has_local_server():
            assert self.ours.client is not None
            client = self.ours.client
            log_file = str(self.work_dir / f"local-{uuid.uuid4().hex[:8]}.log")
            try:
                server = client.LocalJupyterServer(log_file=log_file)
            except TypeError:
                server = client.LocalJupyterServer()
            try:
                server_ready = time.perf_counter()
                executor = client.JupyterCodeExecutor(server, output_dir=self.output_dir)
                try:
                    executor_ready = time.perf_counter()
                    code_block = getattr(client, "CodeBlock", _CodeBlock)
                    result = executor.execute_code_blocks([code_block(code="1", language="python")])
                    if result.exit_code != 0:
                        raise BenchmarkError(f"First call failed: {result.output[:300]}")
                    done = time.perf_counter()
                finally:
                    executor.stop()
            finally:
                server.stop()
        else:
            server_process = ServerProcess(self.work_dir, self.sweeper)
            try:
                server_ready = time.perf_counter()
                rest = RestSession(server_process, self.output_dir)
                executor_ready = time.perf_counter()
                rest.run("1")
                done = time.perf_counter()
                rest.close()
            finally:
                server_process.stop()
        return {
            "total": round(done - started, 4),
            "server_ready": round(server_ready - started, 4),
            "session_ready": round(executor_ready - server_ready, 4),
            "first_call": round(done - executor_ready, 4),
        }

    def _interleaved(
        self, first: Callable[[], Any], second: Callable[[], Any]
    ) -> tuple[list[float], list[float]]:
        """Seconds per call of ``first`` and ``second``, after a warm-up, in alternating
        blocks (``roundtrip_calls`` each), so that a change of load hits both alike."""
        settings = self.settings
        for _ in range(settings.warmup_calls):
            first()
            second()
        first_times: list[float] = []
        second_times: list[float] = []
        while len(first_times) < settings.roundtrip_calls:
            block = min(settings.roundtrip_block, settings.roundtrip_calls - len(first_times))
            first_times.extend(timed(first) for _ in range(block))
            second_times.extend(timed(second) for _ in range(block))
        return first_times, second_times

    def measure_roundtrip(self, session: OurSession, raw: RawKernel) -> None:
        """``x=1`` through our path and the floor, interleaved in blocks."""
        settings = self.settings
        progress(f"Round trip of {CALL_CODE!r}: {settings.roundtrip_calls} calls each")
        ours, floor = self._interleaved(
            lambda: session.run(CALL_CODE), lambda: raw.execute(CALL_CODE)
        )
        ours_ms, floor_ms = milliseconds(ours), milliseconds(floor)
        details = {"ours": summary(ours_ms), "raw": summary(floor_ms)}
        self.add(
            Metric(
                "roundtrip_median",
                f"{CALL_CODE} round trip, median",
                "ms",
                statistics.median(ours_ms),
                statistics.median(floor_ms),
                Target("ratio_max", 1.25),
                details,
            )
        )
        self.add(
            Metric(
                "roundtrip_p95",
                f"{CALL_CODE} round trip, p95",
                "ms",
                percentile(ours_ms, 0.95),
                percentile(floor_ms, 0.95),
                details=details,
            )
        )

    def measure_workspace_tracking(self, stack: contextlib.ExitStack) -> None:
        """``x=1`` in a working folder of 1,000 files, changes tracked against not tracked.

        Two servers, the same but for ``track_workspace_changes``, each with one session
        whose folder holds 1,000 files; calls alternate between them in blocks.
        """
        progress(f"{CALL_CODE!r} in a folder of 1,000 files, change tracking on and off")
        sessions = []
        for tracked in (True, False):
            server = ServerProcess(
                self.work_dir,
                self.sweeper,
                kernel_pool={},
                extra_args=(f"--AgentSessionManager.track_workspace_changes={tracked}",),
            )
            stack.callback(server.stop)
            session = self.ours.open(server, self.output_dir)
            stack.callback(session.close)
            session.run(WORKSPACE_FILES_CODE)
            sessions.append(session)
        on, off = sessions
        tracked_times, untracked_times = self._interleaved(
            lambda: on.run(CALL_CODE), lambda: off.run(CALL_CODE)
        )
        on_ms, off_ms = milliseconds(tracked_times), milliseconds(untracked_times)
        self.add(
            Metric(
                "workspace_tracking",
                f"{CALL_CODE} with 1,000 files, changes tracked (raw: not tracked)",
                "ms",
                statistics.median(on_ms),
                statistics.median(off_ms),
                Target("ratio_max", 1.05),
                {"tracked": summary(on_ms), "untracked": summary(off_ms)},
            )
        )

    def measure_plot(self, session: OurSession, raw: RawKernel) -> None:
        """A 640x480 matplotlib figure as a PNG file on the client's disk."""
        progress(f"Plot to a PNG on disk: {self.settings.plot_calls} calls each")
        raw_dir = self.output_dir / "raw"
        raw_dir.mkdir(exist_ok=True)
        raw.execute(PLOT_WARMUP_CODE)
        session.run(PLOT_WARMUP_CODE)
        ours: list[float] = []
        floor: list[float] = []
        sizes: dict[str, Any] = {}
        for _ in range(self.settings.plot_calls):
            started = time.perf_counter()
            files = session.run(PLOT_CODE).files
            ours.append(time.perf_counter() - started)
            if len(files) != 1:
                raise BenchmarkError(f"Our plot gave files {files}, not one PNG")
            sizes["ours_png_bytes"] = files[0].stat().st_size
            started = time.perf_counter()
            path = raw_plot_to_disk(raw, raw_dir)
            floor.append(time.perf_counter() - started)
            sizes["raw_png_bytes"] = path.stat().st_size
        # The inline backend crops the 640x480 figure to its content ("tight" bounding box).
        sizes["ours_png_size"], sizes["raw_png_size"] = png_size(files[0]), png_size(path)
        self.add(
            Metric(
                "plot_png",
                "640x480 plot -> PNG on disk, median",
                "ms",
                statistics.median(milliseconds(ours)),
                statistics.median(milliseconds(floor)),
                details={
                    "ours": summary(milliseconds(ours)),
                    "raw": summary(milliseconds(floor)),
                    **sizes,
                },
            )
        )

    def measure_prints(self, session: OurSession, raw: RawKernel) -> None:
        """``print('x' * N)`` for 1 MB and 10 MB, end to end."""
        for megabytes, calls in ((1, self.settings.print_1mb_calls), (10, self.settings.print_10mb_calls)):
            progress(f"Print {megabytes} MB: {calls} calls each")
            code = f"print('x' * {megabytes * MEGABYTE})"
            ours: list[float] = []
            floor: list[float] = []
            returned = printed = 0
            for _ in range(calls):
                started = time.perf_counter()
                returned = session.run(code).output_chars
                ours.append(time.perf_counter() - started)
                started = time.perf_counter()
                printed = len(raw.execute(code).text)
                floor.append(time.perf_counter() - started)
            if printed != megabytes * MEGABYTE + 1:
                raise BenchmarkError(f"The raw kernel printed {printed} characters")
            self.add(
                Metric(
                    f"print_{megabytes}mb",
                    f"print {megabytes} MB, median",
                    "ms",
                    statistics.median(milliseconds(ours)),
                    statistics.median(milliseconds(floor)),
                    details={
                        "ours": summary(milliseconds(ours)),
                        "raw": summary(milliseconds(floor)),
                        "ours_output_chars": returned,
                        "raw_output_chars": printed,
                    },
                )
            )

    def measure_huge_output_memory(self, server: ServerProcess) -> None:
        """The server's peak RSS growth while one call prints, returns or raises 100 MB."""
        session_id = server.create_session()
        server.api("POST", f"agent-sessions/{session_id}/execute", json={"code": "1"})
        for name, code in HUGE_OUTPUT_CODES.items():
            progress(f"Server memory while a call's {name} is 100 MB")
            peak = PeakRss(server.pid)
            started = time.perf_counter()
            result = server.api(
                "POST",
                f"agent-sessions/{session_id}/execute",
                json={"code": code, "timeout": REQUEST_TIMEOUT},
            )
            duration = time.perf_counter() - started
            [full] = [f for f in result["files"] if f["mime_type"] == "text/plain"]
            if full["size"] < 100 * MEGABYTE:
                raise BenchmarkError(f"The whole text of the {name} was not kept: {full}")
            self.add(
                Metric(
                    f"huge_{name}_server_rss",
                    f"server RSS growth, 100 MB {name}",
                    "MB",
                    peak.growth() / 1e6,
                    target=Target("max", 50.0, "MB"),
                    details={
                        "seconds": round(duration, 2),
                        "output_chars": len(result["output"]),
                        "peak_measured_by": peak.how,
                    },
                )
            )
        server.delete_session(session_id)

    def measure_pool_creation(self, server: ServerProcess) -> None:
        """Session creation taken from the pool, waiting for the refill before each."""
        count = self.settings.pool_creations
        progress(f"Sessions from the pool: {count} creations, the pool refilled before each")
        durations = []
        for _ in range(count):
            server.wait_for_pool(DEFAULT_POOL_SIZE)
            session_id = ""

            def create() -> None:
                nonlocal session_id
                session_id = server.create_session()

            durations.append(timed(create))
            server.delete_session(session_id)
        durations_ms = milliseconds(durations)
        self.add(
            Metric(
                "session_from_pool",
                "session from the pool, median",
                "ms",
                statistics.median(durations_ms),
                target=Target("max", 25.0, "ms"),
                details={"how": "POST /api/agent-sessions", **summary(durations_ms)},
            )
        )

    def measure_cold_creation(self, server: ServerProcess) -> None:
        """Session creation without a pool vs a raw kernel start, alternating."""
        count = self.settings.cold_creations
        progress(f"Cold sessions vs raw kernel starts: {count} each, alternating")
        ours, floor = [], []
        for _ in range(count):
            session_id = ""

            def create() -> None:
                nonlocal session_id
                session_id = server.create_session()

            ours.append(timed(create))
            server.delete_session(session_id)
            time.sleep(0.3)
            started = time.perf_counter()
            kernel = RawKernel.start()
            floor.append(time.perf_counter() - started)
            kernel.shutdown()
            time.sleep(0.3)
        ours_ms, floor_ms = milliseconds(ours), milliseconds(floor)
        self.add(
            Metric(
                "session_cold",
                "cold session (no pool) vs kernel start",
                "ms",
                statistics.median(ours_ms),
                statistics.median(floor_ms),
                Target("ratio_max", 1.1),
                {"how": "POST /api/agent-sessions", "ours": summary(ours_ms), "raw": summary(floor_ms)},
            )
        )

    def measure_sandbox(self, stack: contextlib.ExitStack) -> None:
        """Sandboxed sessions against unsandboxed ones: cold creation, and ``x=1``."""
        if shutil.which("bwrap") is None:
            progress("Sandbox lines skipped: bubblewrap (bwrap) is not installed")
            return
        progress("Starting two servers without a kernel pool: sandboxed and not")
        plain = ServerProcess(self.work_dir, self.sweeper, kernel_pool={})
        stack.callback(plain.stop)
        boxed = ServerProcess(
            self.work_dir,
            self.sweeper,
            kernel_pool={},
            extra_args=("--AgentSessionManager.sandbox=bubblewrap",),
        )
        stack.callback(boxed.stop)
        if self.ours.description.startswith("REST"):
            self.ours.check(plain, self.output_dir)
        count = self.settings.cold_creations
        progress(f"Cold sessions, sandboxed vs not: {count} each, alternating")
        samples: dict[str, list[float]] = {"boxed": [], "plain": []}
        for _ in range(count):
            for side, server in (("boxed", boxed), ("plain", plain)):
                session_id = ""

                def create(server: ServerProcess = server) -> None:
                    nonlocal session_id
                    session_id = server.create_session()

                samples[side].append(timed(create))
                server.delete_session(session_id)
                time.sleep(0.3)
        boxed_ms, plain_ms = milliseconds(samples["boxed"]), milliseconds(samples["plain"])
        self.add(
            Metric(
                "sandbox_session_cold",
                "sandboxed cold session vs unsandboxed",
                "ms",
                statistics.median(boxed_ms),
                statistics.median(plain_ms),
                Target("ratio_max", 1.1),
                {"ours": summary(boxed_ms), "raw": summary(plain_ms)},
            )
        )
        settings = self.settings
        progress(f"{CALL_CODE!r} sandboxed vs not: {settings.roundtrip_calls} calls each")
        boxed_session = self.ours.open(boxed, self.output_dir)
        stack.callback(boxed_session.close)
        plain_session = self.ours.open(plain, self.output_dir)
        stack.callback(plain_session.close)
        boxed_calls, plain_calls = self._interleaved(
            lambda: boxed_session.run(CALL_CODE), lambda: plain_session.run(CALL_CODE)
        )
        boxed_ms, plain_ms = milliseconds(boxed_calls), milliseconds(plain_calls)
        self.add(
            Metric(
                "sandbox_roundtrip_median",
                f"{CALL_CODE} sandboxed vs unsandboxed, median",
                "ms",
                statistics.median(boxed_ms),
                statistics.median(plain_ms),
                Target("ratio_max", 1.05),
                {"ours": summary(boxed_ms), "raw": summary(plain_ms)},
            )
        )
        boxed_session.close()
        plain_session.close()
        boxed.stop()
        plain.stop()

    def measure_many_sessions(self, server: ServerProcess, stack: contextlib.ExitStack) -> None:
        """Memory per session, idle CPU, CPU of one sleeping call, concurrent throughput."""
        settings = self.settings
        count = settings.concurrent_sessions
        rss_empty = server.rss_after_gc()
        progress(f"Opening {count} sessions")
        with ThreadPoolExecutor(SETUP_PARALLELISM) as pool:
            sessions = list(
                pool.map(lambda _: self.ours.open(server, self.output_dir), range(count))
            )
        for session in sessions:
            stack.callback(session.close)
        with ThreadPoolExecutor(SETUP_PARALLELISM) as pool:
            list(pool.map(lambda s: s.run(CALL_CODE), sessions))
        time.sleep(1.0)
        rss_full = server.rss_after_gc()
        memory = Metric(
                "memory_per_session",
                "server memory per session",
                "MB",
                (rss_full - rss_empty) / count / 1e6,
                target=Target("max", 2.0, "MB"),
                details={
                    "sessions": count,
                    "rss_without_sessions_mb": round(rss_empty / 1e6, 2),
                    "rss_with_sessions_mb": round(rss_full / 1e6, 2),
                    "pool": "off (this server has kernel_pool={})",
                },
            )
        self.add(memory)

        progress(f"Server CPU with {count} idle sessions, over {settings.cpu_window:g} s")
        before = server.cpu_seconds()
        time.sleep(settings.cpu_window)
        idle_percent = (server.cpu_seconds() - before) / settings.cpu_window * 100
        self.add(
            Metric(
                "cpu_idle",
                f"server CPU, {count} idle sessions",
                "% core",
                idle_percent,
                target=Target("max", 1.0, "% core"),
                details={"window_s": settings.cpu_window},
            )
        )

        progress(f"Server CPU while one call sleeps, over {settings.cpu_window:g} s")
        sleeper = sessions[0]
        sleep_code = f"import time; time.sleep({settings.cpu_window + 1.0:g})"
        thread = threading.Thread(target=sleeper.run, args=(sleep_code,), daemon=True)
        thread.start()
        time.sleep(0.5)
        before = server.cpu_seconds()
        time.sleep(settings.cpu_window)
        sleeping_percent = (server.cpu_seconds() - before) / settings.cpu_window * 100
        thread.join()
        self.add(
            Metric(
                "cpu_one_sleeping_call",
                "server CPU, one call in time.sleep",
                "% core",
                sleeping_percent,
                details={"window_s": settings.cpu_window, "idle_sessions": count - 1},
            )
        )

        progress(f"Starting {count} raw kernels")
        raw_kernels = start_raw_kernels(count)
        for kernel in raw_kernels:
            stack.callback(kernel.shutdown)
            kernel.execute(CALL_CODE)
        calls = settings.calls_per_session

        def ours_worker(session: OurSession) -> Callable[[], None]:
            def work() -> None:
                for _ in range(calls):
                    session.run(CALL_CODE)

            return work

        def raw_worker(kernel: RawKernel) -> Callable[[], None]:
            def work() -> None:
                for _ in range(calls):
                    kernel.execute(CALL_CODE)

            return work

        ours_rates, raw_rates = [], []
        total = count * calls
        for round_number in range(settings.concurrency_rounds):
            progress(
                f"Concurrency round {round_number + 1}: {count} threads x {calls} calls, each side"
            )
            ours_rates.append(total / run_in_threads([ours_worker(s) for s in sessions]))
            raw_rates.append(total / run_in_threads([raw_worker(k) for k in raw_kernels]))
        self.add(
            Metric(
                "concurrent_calls_per_s",
                f"{count} sessions x {calls} calls at once",
                "calls/s",
                max(ours_rates),
                max(raw_rates),
                Target("ratio_min", 0.8),
                {
                    "threads": count,
                    "calls_per_thread": calls,
                    "ours_rounds": [round(r, 1) for r in ours_rates],
                    "raw_rounds": [round(r, 1) for r in raw_rates],
                    "best_of_rounds": True,
                },
            )
        )
        # Growth after calls and what deleting gives back: a leak shows here.
        memory.details["rss_after_concurrent_calls_mb"] = round(server.rss_after_gc() / 1e6, 2)
        for kernel in raw_kernels:
            kernel.shutdown()
        for session in sessions:
            session.close()
        memory.details["rss_after_deleting_sessions_mb"] = round(server.rss_after_gc() / 1e6, 2)


def _uss(process: psutil.Process) -> float:
    """Memory only this process holds (bytes); 0 for one that is gone."""
    with contextlib.suppress(psutil.Error):
        return float(process.memory_full_info().uss)
    return 0.0


def raw_plot_to_disk_first(kernel: RawKernel, output_dir: Path) -> Path:
    """A fresh kernel's first plot to disk: the import of matplotlib included."""
    images = kernel.execute(PLOT_WARMUP_CODE).images
    if len(images) != 1:
        raise BenchmarkError(f"The raw first plot gave {len(images)} PNGs, not one")
    path = output_dir / f"{uuid.uuid4().hex}.png"
    path.write_bytes(base64.b64decode(images[0]))
    return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of the PNG at ``path``; fails when it is no PNG."""
    header = path.read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        raise BenchmarkError(f"{path} is not a PNG")
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON_PATH,
        help=f"where to write the results (default: {DEFAULT_JSON_PATH})",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a target is missed"
    )
    parser.add_argument(
        "--live-only",
        action="store_true",
        help="only the live-output lines (streamed latency and cost, a big background run)",
    )
    parser.add_argument(
        "--mcp-only",
        action="store_true",
        help="only the MCP lines: execute over Streamable HTTP and stdio against REST, and "
        "the start of jupyter-exec mcp (needs the [mcp] extras)",
    )
    parser.add_argument(
        "--rhythm-only",
        action="store_true",
        help="only the agent's-rhythm lines: x=1 and a pooled session after 2 s idle, "
        "interleaved with the raw kernel, and the first plot of a new session",
    )
    parser.add_argument(
        "--many-sessions",
        action="store_true",
        help="only the many-sessions lines: up to 200 idle sessions (idle server CPU, "
        "create/list/x=1 latency against one session, memory per session, sessions per GB)",
    )
    parser.add_argument(
        "--sandbox-only",
        action="store_true",
        help="only the sandbox lines: sandboxed sessions against unsandboxed ones",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON; 0 unless ``--strict`` and a miss."""
    arguments = parse_arguments(argv)
    settings = QUICK if arguments.quick else FULL
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    machine = machine_info()
    work_dir = Path(tempfile.mkdtemp(prefix="jupyter-exec-bench-"))
    sweeper = ProcessSweeper(str(work_dir))
    # Kernels' connection files (and so their command lines) carry the private folder.
    os.environ["JUPYTER_RUNTIME_DIR"] = str(work_dir / "runtime")
    atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
    atexit.register(sweeper.sweep)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_system_exit)

    benchmark = Benchmark(settings, work_dir, sweeper)
    try:
        with contextlib.ExitStack() as stack:
            if arguments.live_only:
                benchmark.run_live(stack)
            elif arguments.mcp_only:
                benchmark.run_mcp(stack)
            elif arguments.sandbox_only:
                benchmark.measure_sandbox(stack)
            elif arguments.rhythm_only:
                benchmark.run_rhythm(stack)
            elif arguments.many_sessions:
                benchmark.run_many_sessions(stack)
            else:
                benchmark.run(stack)
    finally:
        leftovers = sweeper.sweep()
        if leftovers:
            progress(f"Stopped {leftovers} process(es) left behind")

    header = [
        f"jupyter-exec benchmark ({'quick' if arguments.quick else 'full'}), "
        f"{started_at:%Y-%m-%d %H:%M} UTC, {time.perf_counter() - started:.0f} s",
        f"machine: {machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine['memory_gb']} GB, load {machine['load_average']} at start",
        f"python {machine['python']}; "
        + ", ".join(f"{name} {version}" for name, version in machine["packages"].items() if version),
        f"our path: {benchmark.ours.description}",
    ]
    print(render_table(benchmark.metrics, header))

    report = {
        "started": started_at.isoformat(),
        "duration_s": round(time.perf_counter() - started, 1),
        "mode": "quick" if arguments.quick else "full",
        "machine": machine,
        "settings": asdict(settings),
        "our_path": benchmark.ours.description,
        "metrics": [metric.as_json() for metric in benchmark.metrics],
    }
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults written to {arguments.json}")
    missed = [m.label for m in benchmark.metrics if m.passed is False]
    return 1 if arguments.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
