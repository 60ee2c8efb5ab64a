"""The client's live output: ``run`` with callbacks, ``start`` and background executions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from jupyter_exec_client import (
    AsyncJupyterCodeExecutor,
    CodeBlock,
    CodeError,
    Display,
    ExecutionNotFoundError,
    JupyterCodeExecutor,
    JupyterConnectionInfo,
    LocalJupyterServer,
)

pytestmark = pytest.mark.timeout(180)

PLOT = (
"import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalJupyterServer]:
    """One real local server for the module, with heartbeats every half second."""
    root = tmp_path_factory.mktemp("server-root")
    with LocalJupyterServer(
        root_dir=root,
        log_file=root / "server.log",
        extra_args=["--ExecutionRegistry.heartbeat_interval=0.5"],
    ) as running:
        yield running


@pytest.fixture
def executor(server: LocalJupyterServer, tmp_path: Path) -> Iterator[JupyterCodeExecutor]:
    with JupyterCodeExecutor(server, output_dir=tmp_path, timeout=30) as running:
        yield running


class Recorder:
    """Every callback of a run, with the moment it came."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, Any]] = []

    def callbacks(self) -> dict[str, Any]:
        return {
            name: (lambda value, name=name: self.calls.append((time.time(), name, value)))
            for name in ("on_stdout", "on_stderr", "on_display", "on_result", "on_error")
        }

    def of(self, name: str) -> list[Any]:
        return [value for _, kind, value in self.calls if kind == name]


def test_run_calls_back_while_the_code_runs(executor: JupyterCodeExecutor) -> None:
    recorder = Recorder()
    code = (
        "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('later', time.time())"
    )
    result = executor.run(code, **recorder.callbacks())
    [(first_came, _, first)] = [c for c in recorder.calls if c[2] == "first\n"]
    later_printed = float(recorder.of("on_stdout")[-1].split()[-1])
    assert first_came < later_printed  # called back while the code still ran
    assert result.exit_code == 0
    assert result.output.startswith("first\nlater ")
    del first


@pytest.mark.parametrize(
    "code",
    [
        "print('a')\nimport sys\nprint('b', file=sys.stderr)\n6 * 7",
        "print('before')\nraise KeyError('missing')",
        PLOT,
        "from IPython.display import HTML, display\ndisplay(HTML('<b>x</b>'))",
        "for i in range(30000):\n    print(i, 'x' * 40)",
    ],
    ids=["text", "error", "image", "html", "huge"],
)
def test_run_returns_what_execute_code_blocks_returns(
    executor: JupyterCodeExecutor, code: str, tmp_path: Path
) -> None:
    expected = executor.execute_code_blocks([CodeBlock(code, "python")])
    recorder = Recorder()
    result = executor.run(code, **recorder.callbacks())

    def without_paths(text: str) -> str:
        return text.replace(str(tmp_path), "<dir>").replace("Out[", "").replace("In [", "")

    def normal(text: str) -> str:
        return re.sub(r"<dir>/\w+\.", "<file>.", re.sub(r"\d+\]", "]", without_paths(text)))

    assert result.exit_code == expected.exit_code
    assert normal(result.output) == normal(expected.output)
    assert len(result.output_files) == len(expected.output_files)
    for file in result.output_files:
        assert Path(file).is_file()


def test_a_display_is_on_disk_when_on_display_runs(executor: JupyterCodeExecutor) -> None:
    seen: list[tuple[Display, list[bool]]] = []

    def on_display(display: Display) -> None:
        seen.append((display, [path.is_file() for path in display.files]))

    result = executor.run(PLOT, on_display=on_display)
    [(display, on_disk)] = seen
    assert on_disk == [True]
    assert display.mime_types[0] == "image/png" or "image/png" in display.mime_types
    assert display.files[0].read_bytes().startswith(b"\x89PNG")
    # The result names the same file, not a second copy.
    assert result.output_files == [str(display.files[0])]


def test_errors_and_results_are_called_back(executor: JupyterCodeExecutor) -> None:
    recorder = Recorder()
    executor.run("x = 6 * 7\nx", **recorder.callbacks())
    [value] = recorder.of("on_result")
    assert value.text == "42"
    assert value.execution_count is not None
    executor.run("import sys\nprint('warn', file=sys.stderr)\nx / 0", **recorder.callbacks())
    assert recorder.of("on_stderr") == ["warn\n"]
    [error] = recorder.of("on_error")
    assert isinstance(error, CodeError)
    assert error.ename == "ZeroDivisionError"
    assert "x / 0" in "".join(error.traceback)


def test_a_timeout_in_run_is_noted_and_keeps_state(executor: JupyterCodeExecutor) -> None:
    notes: list[str] = []
    executor.run("kept = 1")
    result = executor.run(
        "import time\nprint('slow', flush=True)\ntime.sleep(30)", timeout=1, on_note=notes.append
    )
    assert result.exit_code == 1
    assert "timeout of 1 s" in notes[0]
    assert executor.run("print(kept)").output == "1"


def test_a_background_run_is_followed_and_waited_for(executor: JupyterCodeExecutor) -> None:
    execution = executor.start(
        "import time\nfor i in range(4):\n    print('step', i, flush=True)\n    time.sleep(0.3)"
    )
    assert execution.session_id == executor.session_id
    assert execution.status() in ("queued", "running")
    events = list(execution.events())
    assert events[-1]["type"] == "done"
    assert "".join(e["text"] for e in events[:-1]) == "".join(f"step {i}\n" for i in range(4))
    assert execution.status() == "ok"
    result = execution.wait()
    assert result.exit_code == 0
    assert result.output == "step 0\nstep 1\nstep 2\nstep 3"


def test_wait_with_a_timeout_and_interrupt(executor: JupyterCodeExecutor) -> None:
    execution = executor.start("import time\nprint('on', flush=True)\ntime.sleep(60)")
    with pytest.raises(TimeoutError, match="still"):
        execution.wait(timeout=1)
    execution.interrupt()
    result = execution.wait(timeout=30)
    assert result.exit_code == 1
    assert "KeyboardInterrupt" in result.output
    with pytest.raises(ExecutionNotFoundError, match="no-such"):
        executor.execution("no-such-execution").status()


def test_a_background_run_outlives_the_process_that_started_it(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    info = server.connection_info
    script = textwrap.dedent(
        f"""
        import json, os
        from jupyter_exec_client import JupyterCodeExecutor, JupyterConnectionInfo
        info = JupyterConnectionInfo({info.host!r}, False, {info.port}, token={info.token!r})
        executor = JupyterCodeExecutor(info, output_dir={str(tmp_path)!r})
        code = "import time\\nfor i in range(6):\\n print('tick', i, flush=True)\\n time.sleep(0.2)"
        execution = executor.start(code)
        print(json.dumps([execution.session_id, execution.id]), flush=True)
        os._exit(0)  # gone at once, without deleting anything
        """
    )
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    session_id, execution_id = json.loads(finished.stdout)
    try:
        with JupyterCodeExecutor(server, output_dir=tmp_path) as other:
            execution = other.execution(execution_id, session_id=session_id)
            result = execution.wait(timeout=60)
            assert result.output == "\n".join(f"tick {i}" for i in range(6))
            replayed = [e for e in execution.events() if e["type"] == "stream"]
            assert "".join(e["text"] for e in replayed) == result.output + "\n"
    finally:
        requests.delete(
            info.url(f"api/agent-sessions/{session_id}"),
            headers={"Authorization": f"token {info.token}"},
            timeout=60,
        )


class DroppingProxy:
    """A TCP proxy to the server whose connections can be cut, as a flaky network cuts them."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.connections += [client, upstream]
            self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def drop_all(self) -> None:
        for sock in self.connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.connections = []

    def close(self) -> None:
        self.listener.close()
        self.drop_all()


def test_events_resume_by_themselves_after_a_dropped_connection(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    info = server.connection_info
    proxy = DroppingProxy(info.port)
    try:
        via_proxy = JupyterConnectionInfo("127.0.0.1", False, proxy.port, token=info.token)
        with JupyterCodeExecutor(via_proxy, output_dir=tmp_path) as executor:
            execution = executor.start(
                "import time\nfor i in range(10):\n    print(i, flush=True)\n    time.sleep(0.15)"
            )
            events = []
            for event in execution.events():
                events.append(event)
                if len(events) == 3:
                    proxy.drop_all()  # mid-stream, as a proxy or a sleeping laptop does
            assert proxy.accepted >= 2
            outputs = events[:-1]
            assert [e["seq"] for e in outputs] == list(range(1, len(outputs) + 1))
            assert "".join(e["text"] for e in outputs) == "".join(f"{i}\n" for i in range(10))
            assert events[-1]["type"] == "done"
    finally:
        proxy.close()


def test_the_async_executor_mirrors_it(server: LocalJupyterServer, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncJupyterCodeExecutor(server, output_dir=tmp_path) as executor:
            printed: list[str] = []
            displays: list[Display] = []
            result = await executor.run(
                "print('hi')\n" + PLOT, on_stdout=printed.append, on_display=displays.append
            )
            assert printed == ["hi\n"]
            assert displays[0].files[0].is_file()
            assert result.output_files == [str(displays[0].files[0])]
            execution = await executor.start("print('bg')")
            events = [event async for event in execution.events()]
            assert events[0]["text"] == "bg\n"
            assert (await execution.wait()).output == "bg"
            assert await execution.status() == "ok"
            again = executor.execution(execution.id)
            assert (await again.wait()).output == "bg"
            # A cancelled run is interrupted: the session is free at once.
            task = asyncio.ensure_future(executor.run("import time\ntime.sleep(60)"))
            await asyncio.sleep(1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            started = time.monotonic()
            assert (await executor.run("print('free')")).output == "free"
            assert time.monotonic() - started < 10

    asyncio.run(main())
