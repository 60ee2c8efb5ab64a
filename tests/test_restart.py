"""Staying power: executors and the CLI whose session vanished (a server restart, a delete).

A real server is stopped and started again on the same port with the same token; the next
call of an executor that had a session on it answers with one clear failed result (the
session was lost with its variables; a new one is started) and the call after runs normally.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_exec_client import (
    AsyncJupyterCodeExecutor,
    CodeBlock,
    JupyterCodeExecutor,
    JupyterConnectionInfo,
    LocalJupyterServer,
    ServerConnectionError,
    SessionLostError,
)

from .conftest import free_port

pytestmark = pytest.mark.timeout(240)

#: The console script installed with the client, beside this Python.
JUPYTER_EXEC = Path(sys.executable).with_name("jupyter-exec")


class RestartableServer:
    """A LocalJupyterServer that can be stopped and started again at the same address."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.token = "restart-test-token"
        self.server: LocalJupyterServer | None = None
        self.start()

    @property
    def connection_info(self) -> JupyterConnectionInfo:
        """Where the server is (the same before and after a restart)."""
        return JupyterConnectionInfo(
            host="127.0.0.1", use_https=False, port=self.port, token=self.token
        )

    def start(self) -> None:
        self.server = LocalJupyterServer(
            port=self.port,
            token=self.token,
            root_dir=self.root,
            log_file=self.root / "server.log",
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def delete_session(self, session_id: str) -> None:
        """Delete a session behind its executor's back, as another client would."""
        request = urllib.request.Request(
            f"{self.connection_info.base_url}api/agent-sessions/{session_id}",
            method="DELETE",
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 204

    def sessions(self) -> list[dict[str, object]]:
        request = urllib.request.Request(
            f"{self.connection_info.base_url}api/agent-sessions",
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            models: list[dict[str, object]] = json.loads(answer.read())
            return models

    def session_ids(self) -> list[str]:
        return [str(model["id"]) for model in self.sessions()]

    def wait_idle(self, timeout: float = 60) -> str:
        """Wait until the server's one session is idle; return its id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            (model,) = self.sessions()
            if model["status"] == "idle":
                return str(model["id"])
            time.sleep(0.05)
        raise AssertionError("the session stayed busy")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableServer]:
    running = RestartableServer(tmp_path_factory.mktemp("restart-root"))
    try:
        yield running
    finally:
        running.stop()


def block(code: str) -> list[CodeBlock]:
    return [CodeBlock(code=code, language="python")]


def assert_lost(output: str, old_session: str | None, new_session: str | None) -> None:
    """The lost-session result names both sessions and says the code was not run."""
    assert old_session is not None
    assert new_session is not None
    assert new_session != old_session
    assert f"agent session {old_session} was lost" in output
    assert f"new session {new_session} was started" in output
    assert "This code was not run" in output


def test_sync_executor_survives_a_server_restart(server: RestartableServer, tmp_path: Path) -> None:
    with JupyterCodeExecutor(server.connection_info, output_dir=tmp_path) as executor:
        assert executor.execute_code_blocks(block("x = 41")).exit_code == 0
        old = executor.session_id
        server.restart()
        lost = executor.execute_code_blocks(block("print(x + 1)"))
        assert lost.exit_code == 1
        assert_lost(lost.output, old, executor.session_id)
        assert executor.session_id in server.session_ids()
        # The call after runs normally, in the new (empty) session.
        after = executor.execute_code_blocks(block("print('x' in dir())"))
        assert (after.exit_code, after.output) == (0, "False")


def test_calls_while_the_server_is_down_raise_then_recover(
    server: RestartableServer, tmp_path: Path
) -> None:
    with JupyterCodeExecutor(server.connection_info, output_dir=tmp_path) as executor:
        old = executor.session_id
        server.stop()
        try:
            with pytest.raises(ServerConnectionError):
                executor.execute_code_blocks(block("print(1)"))
            with pytest.raises(ServerConnectionError):
                executor.run("print(1)")
            # Still the old session: nothing was replaced while nobody could answer.
            assert executor.session_id == old
        finally:
            server.start()
        notes: list[str] = []
        lost = executor.run("print(1)", on_note=notes.append)
        assert lost.exit_code == 1
        assert_lost(lost.output, old, executor.session_id)
        assert notes == [lost.output]
        assert executor.run("print(2)").output == "2"


def test_a_deleted_session_is_replaced_on_every_run_path(
    server: RestartableServer, tmp_path: Path
) -> None:
    with JupyterCodeExecutor(server.connection_info, output_dir=tmp_path) as executor:
        old = executor.session_id
        assert old is not None
        server.delete_session(old)
        lost = executor.run("print(1)")
        assert lost.exit_code == 1
        assert_lost(lost.output, old, executor.session_id)

        # A background start has no result to say it in: it raises, and the next works.
        old = executor.session_id
        assert old is not None
        server.delete_session(old)
        with pytest.raises(SessionLostError) as raised:
            executor.start("print(1)")
        assert_lost(str(raised.value), old, executor.session_id)
        assert executor.start("print('background')").wait(timeout=60).output == "background"


def test_async_executor_survives_a_server_restart(
    server: RestartableServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with AsyncJupyterCodeExecutor(server.connection_info, output_dir=tmp_path) as ex:
            assert (await ex.execute_code_blocks(block("y = 1"))).exit_code == 0
            old = ex.session_id
            await asyncio.to_thread(server.restart)
            lost = await ex.execute_code_blocks(block("print(y)"))
            assert lost.exit_code == 1
            assert_lost(lost.output, old, ex.session_id)
            assert (await ex.execute_code_blocks(block("print(2)"))).output == "2"
            # And on the streaming path.
            old = ex.session_id
            await asyncio.to_thread(server.restart)
            lost = await ex.run("print(3)")
            assert lost.exit_code == 1
            assert_lost(lost.output, old, ex.session_id)
            assert (await ex.run("print(4)")).output == "4"

    asyncio.run(scenario())


def _wait_stopped(pid: int, timeout: float = 60) -> None:
    """Wait until the process ``pid`` is stopped by a signal (state T)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not stop")


@pytest.mark.parametrize("how", ["restart", "delete"])
def test_cli_run_reports_a_lost_session_with_status_1(
    server: RestartableServer, tmp_path: Path, how: str
) -> None:
    # The first cell stops the command itself (SIGSTOP) once its output is on the way; the
    # session is lost while the command is stopped, so the second cell finds it gone.
    pid_file = tmp_path / "cli.pid"
    script = tmp_path / "two_cells.py"
    script.write_text(
        "import os, pathlib, signal, time\n"
        f"pid_file = pathlib.Path({str(pid_file)!r})\n"
        "while not pid_file.exists():\n"
        "    time.sleep(0.05)\n"
        "print('first cell', flush=True)\n"
        "os.kill(int(pid_file.read_text()), signal.SIGSTOP)\n"
        "# %%\n"
        "print('second cell')\n"
    )
    info = server.connection_info
    env = {**os.environ, "JUPYTER_EXEC_URL": info.base_url, "JUPYTER_EXEC_TOKEN": info.token}
    process = subprocess.Popen(
        [str(JUPYTER_EXEC), "run", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        pid_file.write_text(str(process.pid))
        _wait_stopped(process.pid)
        # The first cell's end is sent (into the stopped command's socket) once it is idle.
        session_id = server.wait_idle()
        if how == "restart":
            server.restart()
        else:
            server.delete_session(session_id)
        process.send_signal(signal.SIGCONT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, stderr
    # The note comes where the CLI prints the server's notes: in brackets, on stdout.
    first, note = stdout.splitlines()
    assert first == "first cell"
    assert note.startswith("[The agent session")
    assert "This code was not run" in note
    assert "second cell" not in stdout
    assert "cell 2/2 (line 8) failed" in stderr
