"""Sandboxed session kernels: what agent code can reach, measured from the host.

Every probe runs the same code in a session's kernel with ``sandbox="bubblewrap"`` and with
``sandbox="none"``: without the sandbox each probe must find its leak (so the probe can see
one), with it none may. What a probe reached is judged on the host side: secrets showing up
in results, files appearing on the host's disk, connections accepted by a host socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from jupyter_exec_client import (
    AsyncJupyterCodeExecutor,
    CodeBlock,
    JupyterCodeExecutor,
    LocalJupyterServer,
)

from jupyter_exec_ext.sandbox import SANDBOX_WORKING_DIR

from .conftest import Api
from .test_client_cli import jupyter_exec

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]

SANDBOXED = {"sandbox": "bubblewrap"}


@pytest.fixture
def server_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """A secret in the server's environment, as an API key would be."""
    value = f"server-secret-{secrets.token_hex(8)}"
    monkeypatch.setenv("JX_TEST_API_KEY", value)
    return value


@pytest.fixture
def loopback_listener() -> Iterator[socket.socket]:
    """A host socket on another loopback port: whether a kernel reached it is seen here."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        yield listener


def accepted(listener: socket.socket) -> bool:
    """Whether someone connected to the listener (checked on the host)."""
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


def probe_code(targets: dict[str, Any]) -> str:
    """Code that tries every escape and writes, as JSON, what each attempt read or said."""
    return f"""
import json, os, socket
targets = json.loads({json.dumps(json.dumps(targets))})
found = {{}}
def attempt(name, action):
    try:
        found[name] = str(action())
    except Exception as e:
        found[name] = "failed: " + type(e).__name__

def read(path):
    with open(path, errors="replace") as f:
        return f.read()

def read_folder(path):
    return "".join(read(os.path.join(path, n)) for n in sorted(os.listdir(path))
                   if os.path.isfile(os.path.join(path, n)))

def every_environment():
    texts = [repr(dict(os.environ))]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                texts.append(read("/proc/%s/environ" % pid))
            except OSError:
                pass
    return "".join(texts)

def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        return "connected"

def write(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("written by a kernel")
    return "wrote"

attempt("other_session_file", lambda: read(targets["other_session_file"]))
attempt("server_config", lambda: read_folder(targets["config_dir"]))
attempt("env_jupyter_config", lambda: os.listdir(targets["env_config_dir"]) or "failed: empty")
attempt("runtime_folder", lambda: read_folder(targets["runtime_dir"]))
attempt("server_environ", lambda: read("/proc/%d/environ" % targets["server_pid"]))
attempt("server_cmdline", lambda: read("/proc/%d/cmdline" % targets["server_pid"]))
attempt("environment_secret", every_environment)
attempt("server_port", lambda: connect(targets["server_port"]))
attempt("loopback_port", lambda: connect(targets["loopback_port"]))
attempt("python_env_write", lambda: write(targets["python_env_file"]))
attempt("root_dir_write", lambda: write(targets["root_dir_file"]))
# To a file of the session's folder, which the host reads: what a probe read (every process's
# environment, unsandboxed) can be longer than a result keeps.
with open("probe.json", "w") as f:
    json.dump(found, f)
"""


@pytest.mark.parametrize(
    "agent_config", [SANDBOXED, {"sandbox": "none"}], ids=["bubblewrap", "none"]
)
async def test_probes_find_every_leak_without_the_sandbox_and_none_with_it(
    api: Api,
    agent_config: dict[str, Any],
    jp_serverapp: Any,
    jp_root_dir: Path,
    jp_config_dir: Path,
    jp_runtime_dir: Path,
    jp_http_port: int,
    server_secret: str,
    loopback_listener: socket.socket,
) -> None:
    token = jp_serverapp.identity_provider.token
    # Where a real server keeps its token: a config file and its jpserver-<pid>.json.
    (jp_config_dir / "jupyter_server_config.json").write_text(
        json.dumps({"IdentityProvider": {"token": token}})
    )
    jp_serverapp.write_server_info_file()
    victim, prober = await api.create(name="victim"), await api.create(name="prober")
    other_secret = f"other-session-{secrets.token_hex(8)}"
    other_file = jp_root_dir / "agent-sessions" / "victim" / "notes.txt"
    other_file.write_text(other_secret)
    marker = secrets.token_hex(6)
    python_env_file = Path(sysconfig.get_paths()["purelib"]) / f"jx-probe-{marker}.txt"
    root_dir_file = jp_root_dir / f"jx-probe-{marker}.txt"
    targets = {
        "other_session_file": str(other_file),
        "config_dir": str(jp_config_dir),
        "env_config_dir": str(Path(sysconfig.get_paths()["data"]) / "etc" / "jupyter"),
        "runtime_dir": str(jp_runtime_dir),
        "server_pid": os.getpid(),  # pytest-jupyter's server runs in this process
        "server_port": jp_http_port,
        "loopback_port": loopback_listener.getsockname()[1],
        "python_env_file": str(python_env_file),
        "root_dir_file": str(root_dir_file),
    }
    try:
        result = await api.execute(prober["id"], probe_code(targets), timeout=30)
        assert result["status"] == "ok", result["output"]
        found = json.loads((jp_root_dir / "agent-sessions" / "prober" / "probe.json").read_text())
        leaks = {
            "other_session_file": other_secret in found["other_session_file"],
            "server_config": token in found["server_config"],
            "env_jupyter_config": not found["env_jupyter_config"].startswith("failed"),
            "runtime_folder": token in found["runtime_folder"],
            # /proc/<pid>/environ holds the environment the process started with; the
            # secret was set later (in this process), so any variable proves the leak.
            "server_environ": "PATH=" in found["server_environ"],
            "server_cmdline": not found["server_cmdline"].startswith("failed"),
            "environment_secret": server_secret in found["environment_secret"],
            "server_port": found["server_port"] == "connected",
            "loopback_port": accepted(loopback_listener),
            "python_env_write": python_env_file.exists(),
            "root_dir_write": root_dir_file.exists(),
        }
    finally:
        python_env_file.unlink(missing_ok=True)
        root_dir_file.unlink(missing_ok=True)
    leaked = agent_config["sandbox"] == "none"
    assert leaks == dict.fromkeys(leaks, leaked), found
    # The victim is untouched either way, and the prober still works in its own folder.
    assert (await api.execute(victim["id"], "open('notes.txt').read()"))["output"] == (
        repr(other_secret) + "\n"
    )


@pytest.mark.parametrize("agent_config", [{**SANDBOXED, "sandbox_network": True}])
async def test_sandbox_network_lets_kernels_reach_the_network(
    api: Api, loopback_listener: socket.socket
) -> None:
    session = await api.create()
    port = loopback_listener.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).close()"
    assert (await api.execute(session["id"], code))["status"] == "ok"
    assert accepted(loopback_listener)


@pytest.mark.parametrize("agent_config", [SANDBOXED])
async def test_a_sandboxed_session_works_like_any_other(
    api: Api, jp_root_dir: Path, server_secret: str
) -> None:
    session = await api.create(name="worker")
    folder = jp_root_dir / "agent-sessions" / "worker"
    code = (
        "import os\nopen('made-inside.txt', 'w').write('hello')\n"
        "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\nprint(os.getcwd())"
    )
    result = await api.execute(session["id"], code, timeout=60)
    assert result["status"] == "ok", result["output"]
    assert result["output"].endswith("]\n" + SANDBOX_WORKING_DIR + "\n")
    assert [f["mime_type"] for f in result["files"]] == ["image/png"]
    assert (folder / "made-inside.txt").read_text() == "hello"  # on the host, in its folder
    # Private /tmp and home, writable; the environment is clean.
    code = (
        "import os, tempfile\nopen('/tmp/t', 'w').write('t')\n"
        "open(os.path.expanduser('~/h'), 'w').write('h')\n"
        "names = ('HOME', 'JPY_PARENT_PID', 'JX_TEST_API_KEY')\n"
        "print(sorted(os.environ.get(name, '-') for name in names))"
    )
    assert (await api.execute(session["id"], code))["output"] == "['-', '-', '/home/agent']\n"
    # The transcript is written on the host as usual.
    await api.request("DELETE", session["id"])
    notebook = nbformat.read(folder / "transcript.ipynb", as_version=4)
    assert notebook.cells[0].source.startswith("import os\nopen('made")


@pytest.mark.parametrize("agent_config", [SANDBOXED])
async def test_a_sandboxed_session_gets_its_own_env_and_not_the_servers(
    api: Api, server_secret: str
) -> None:
    session = await api.create(env={"AGENT_KEY": "for-the-agent"})
    assert session["env_keys"] == ["AGENT_KEY"]
    code = "import os\nprint(os.environ.get('AGENT_KEY'), os.environ.get('JX_TEST_API_KEY'))"
    assert (await api.execute(session["id"], code))["output"] == "for-the-agent None\n"
    # A restart starts the sandbox anew, with the session's env and still not the server's.
    assert (await api.request("POST", session["id"], "restart")).status == 200
    assert (await api.execute(session["id"], code))["output"] == "for-the-agent None\n"


@pytest.mark.parametrize("agent_config", [SANDBOXED])
async def test_interrupts_timeouts_restarts_and_deaths_work_as_without_the_sandbox(
    api: Api, jp_root_dir: Path
) -> None:
    session = await api.create(name="steady")
    await api.execute(session["id"], "kept = 41")
    timed_out = await api.execute(session["id"], "import time\ntime.sleep(30)", timeout=1)
    assert timed_out["status"] == "timeout"
    assert "Variables set before the interrupt are kept" in timed_out["output"]
    call = asyncio.ensure_future(api.execute(session["id"], "time.sleep(30)"))
    while (await api.request("GET", session["id"])).json["status"] != "busy":
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert (await api.request("POST", session["id"], "interrupt")).status == 204
    interrupted = await call
    assert "KeyboardInterrupt" in interrupted["output"]
    assert (await api.execute(session["id"], "kept + 1"))["output"] == "42\n"

    assert (await api.request("POST", session["id"], "restart")).status == 200
    code = f"import os\nprint('kept' in dir(), os.getcwd(), os.path.exists('/proc/{os.getpid()}'))"
    after = await api.execute(session["id"], code)
    assert after["output"] == f"False {SANDBOX_WORKING_DIR} False\n"
    await api.execute(session["id"], "open('after-restart.txt', 'w').write('x')")
    assert (jp_root_dir / "agent-sessions" / "steady" / "after-restart.txt").exists()

    # The pause lets IOPub send the line first, as in test_execution's death test.
    died = await api.execute(
        session["id"], "import os, time\nprint('going', flush=True)\ntime.sleep(0.3)\nos._exit(3)"
    )
    assert died["status"] == "dead"
    assert died["output"].startswith("going\n")
    exited = await api.execute(session["id"], "exit()")
    assert "the session's state (variables, imports) is lost" in exited["output"]
    assert (await api.execute(session["id"], "import os\nos.getcwd()"))["output"] == (
        repr(SANDBOX_WORKING_DIR) + "\n"
    )


def kernel_processes(kernel: Any) -> list[psutil.Process]:
    """The bwrap process of a kernel and everything under it, seen from the host."""
    parent = psutil.Process(kernel.provisioner.pid)
    return [parent, *parent.children(recursive=True)]


@pytest.mark.parametrize(
    "agent_config", [{**SANDBOXED, "sandbox_process_limit": 40, "sandbox_cpu_limit": 0.5}]
)
async def test_a_fork_bomb_is_contained(api: Api, jp_serverapp: Any) -> None:
    bomb, bystander = await api.create(), await api.create()
    await api.execute(bystander["id"], "kept = 'yes'")
    code = (
        "import os, time\nborn = 0\n"
        "try:\n"
        "    for _ in range(10_000):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        born += 1\n"
        "except OSError as e:\n"
        "    print('stopped after', born, type(e).__name__)"
    )
    result = await api.execute(bomb["id"], code, timeout=60)
    assert "stopped after" in result["output"], result["output"]
    kernel = jp_serverapp.kernel_manager.get_kernel(bomb["kernel_id"])
    # Counted on the host: the sandbox's processes and threads stay within the limit.
    threads = sum(process.num_threads() for process in kernel_processes(kernel))
    assert 20 < threads <= 40
    assert (await api.execute(bystander["id"], "kept"))["output"] == "'yes'\n"
    assert (await api.execute(bomb["id"], "1 + 1"))["output"] == "2\n"


@pytest.mark.parametrize("agent_config", [{**SANDBOXED, "sandbox_cpu_limit": 0.25}])
async def test_the_cpu_limit_holds_for_all_of_a_kernels_processes(api: Api) -> None:
    session = await api.create()
    # Two busy processes for two seconds: their CPU time, measured by the kernel's own clock
    # of its children, is at most the quota's share of the wall time (more load only lowers it).
    code = (
        "import multiprocessing, os, time\n"
        "def spin():\n    end = time.time() + 2\n    while time.time() < end: pass\n"
        "start = time.time()\n"
        "workers = [multiprocessing.Process(target=spin) for _ in range(2)]\n"
        "[w.start() for w in workers]; [w.join() for w in workers]\n"
        "times = os.times()\n"
        "print(round((times.children_user + times.children_system) / (time.time() - start), 2))"
    )
    result = await api.execute(session["id"], code, timeout=60)
    assert result["status"] == "ok", result["output"]
    assert float(result["output"]) <= 0.25 * 1.3


@pytest.mark.parametrize("agent_config", [{**SANDBOXED, "kernel_memory_limit": 400_000_000}])
async def test_a_memory_bomb_gets_the_memory_limit_result_and_a_fresh_kernel(
    api: Api, jp_serverapp: Any
) -> None:
    bomb, bystander = await api.create(), await api.create()
    await api.execute(bystander["id"], "kept = 'yes'")
    await api.execute(bomb["id"], "lost = 1")
    kernel = jp_serverapp.kernel_manager.get_kernel(bomb["kernel_id"])
    first_pid = kernel.provisioner.pid
    # Files in the private /tmp are memory, charged to the kernel's cgroup: the rlimit on
    # the kernel's own data (the kernel helper's) does not see them, the cgroup does.
    code = (
        "chunk = b'x' * 1_000_000\nwith open('/tmp/hog', 'wb') as f:\n"
        "    for _ in range(2_000):\n        f.write(chunk)"
    )
    result = await api.execute(bomb["id"], code, timeout=60)
    assert result["status"] == "error", result["output"]
    assert "Memory limit reached" in result["output"]
    assert kernel.provisioner.pid != first_pid  # a fresh kernel
    assert (await api.execute(bomb["id"], "'lost' in dir()"))["output"] == "False\n"
    assert (await api.execute(bystander["id"], "kept"))["output"] == "'yes'\n"


@pytest.mark.parametrize("agent_config", [{**SANDBOXED, "kernel_memory_limit": 500_000_000}])
async def test_shutdown_leaves_no_process_folder_or_cgroup(api: Api, jp_serverapp: Any) -> None:
    session = await api.create()
    await api.execute(session["id"], "import subprocess\nsubprocess.Popen(['sleep', '300'])")
    provisioner = jp_serverapp.kernel_manager.get_kernel(session["kernel_id"]).provisioner
    processes = kernel_processes(jp_serverapp.kernel_manager.get_kernel(session["kernel_id"]))
    assert len(processes) >= 4  # bwrap, its init in the sandbox, the kernel, sleep
    kernel_dir, cgroups = provisioner.kernel_dir, provisioner.cgroup.folders
    assert kernel_dir.is_dir()
    assert all(folder.is_dir() for folder in cgroups)
    assert (await api.request("DELETE", session["id"])).status == 204
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert alive == []
    assert not kernel_dir.exists()
    assert not [folder for folder in cgroups if folder.exists()]
    # The server's own cgroup folder goes with its last kernel.
    assert not [folder.parent for folder in cgroups if folder.parent.exists()]


@pytest.mark.parametrize("agent_config", [{**SANDBOXED, "kernel_pool": {"python3": 1}}])
async def test_pooled_sandboxed_kernels_get_their_sessions_folder(
    api: Api, manager: Any, jp_root_dir: Path
) -> None:
    await manager.start()
    for _ in range(400):
        if manager.pooled_kernel_ids():
            break
        await asyncio.sleep(0.05)
    [pooled] = manager.pooled_kernel_ids()
    session = await api.create(name="from-pool")
    assert session["kernel_id"] == pooled
    folder = jp_root_dir / "agent-sessions" / "from-pool"
    await api.execute(session["id"], "open('mine.txt', 'w').write('1')")
    assert (folder / "mine.txt").exists()
    await api.request("POST", session["id"], "restart")
    await api.execute(session["id"], "open('still-mine.txt', 'w').write('2')")
    assert (folder / "still-mine.txt").exists()
    # A session folder that has files already cannot be a pooled kernel's: a kernel of its
    # own starts on it, and the pooled one waits for the next session.
    await api.request("DELETE", session["id"])
    while not manager.pooled_kernel_ids():
        await asyncio.sleep(0.05)
    [waiting] = manager.pooled_kernel_ids()
    again = await api.create(name="from-pool")
    assert again["kernel_id"] != waiting
    assert manager.pooled_kernel_ids() == {waiting}
    assert (await api.execute(again["id"], "open('mine.txt').read()"))["output"] == "'1'\n"


@pytest.mark.parametrize("agent_config", [SANDBOXED])
async def test_without_bubblewrap_creation_fails_closed(
    api: Api, jp_serverapp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    before = set(jp_serverapp.kernel_manager.list_kernel_ids())
    reply = await api.request("POST", body={})
    assert reply.status == 500
    assert "bwrap" in reply.json["message"]
    assert "not started" in reply.json["message"]
    assert set(jp_serverapp.kernel_manager.list_kernel_ids()) == before
    assert psutil.Process().children(recursive=True) == []
    assert (await api.request("GET")).json == []


@pytest.mark.parametrize("agent_config", [SANDBOXED])
async def test_refused_namespaces_fail_closed_with_bubblewraps_message(
    api: Api, jp_serverapp: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A bwrap that refuses, as Debian's does where user namespaces are turned off.
    refusing = tmp_path / "bin" / "bwrap"
    refusing.parent.mkdir()
    refusing.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n"
    )
    refusing.chmod(0o755)
    monkeypatch.setenv("PATH", f"{refusing.parent}:{os.environ['PATH']}")
    reply = await api.request("POST", body={})
    assert reply.status == 500
    assert "No permissions to create a new namespace" in reply.json["message"]
    assert jp_serverapp.kernel_manager.list_kernel_ids() == []


# -- the client: LocalJupyterServer(sandbox=...) and jupyter-exec run --sandbox ---------------


def test_local_server_with_the_sandbox_runs_both_executors_sandboxed(
    tmp_path: Path, server_secret: str
) -> None:
    with LocalJupyterServer(
        root_dir=tmp_path, log_file=tmp_path / "server.log", sandbox="bubblewrap"
    ) as server:
        server_process = psutil.Process(server.pid)
        with JupyterCodeExecutor(server, timeout=2, output_dir=tmp_path) as executor:
            check = CodeBlock(
                language="python",
                code="import os\nkept = 1\n"
                "print(os.getcwd(), os.environ.get('JX_TEST_API_KEY'), "
                f"os.path.exists('/proc/{server.pid}'))",
            )
            result = executor.execute_code_blocks([check])
            assert result.output.strip() == f"{SANDBOX_WORKING_DIR} None False"
            slow = CodeBlock(language="python", code="import time\ntime.sleep(30)")
            assert executor.execute_code_blocks([slow]).exit_code == 1  # interrupted
            again = executor.execute_code_blocks([CodeBlock(language="python", code="kept")])
            assert again.output.strip() == "1"
            plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()"
            shown = executor.execute_code_blocks([CodeBlock(language="python", code=plot)])
            assert [Path(f).suffix for f in shown.output_files] == [".png"]

        async def run_async() -> str:
            async with AsyncJupyterCodeExecutor(server, output_dir=tmp_path) as executor:
                code = "import os\nprint(os.getcwd())"
                block = CodeBlock(language="python", code=code)
                return (await executor.execute_code_blocks([block], None)).output

        assert asyncio.run(run_async()).strip() == SANDBOX_WORKING_DIR
        # The pool's kernel, sandboxed as well (refilled a moment after the last session
        # took one: kernel_pool_refill_delay); stopping the server ends it.
        deadline = time.monotonic() + 60
        while True:
            children = server_process.children(recursive=True)
            sandboxes = [p for p in children if p.name() == "bwrap"]
            if sandboxes or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sandboxes
    _, alive = psutil.wait_procs(sandboxes, timeout=10)
    assert alive == []


def test_jupyter_exec_run_takes_the_sandbox_option(tmp_path: Path) -> None:
    script = "import os\nprint(os.getcwd(), os.path.exists(os.path.expanduser('~/.jupyter')))"
    done = jupyter_exec("run", "--sandbox", "bubblewrap", "-c", script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{SANDBOX_WORKING_DIR} False"
    refused = jupyter_exec("run", "--sandbox", "none", "--url", "http://127.0.0.1:9/", "-c", "1")
    assert refused.returncode == 2
    assert "--sandbox is for the local server" in refused.stderr
