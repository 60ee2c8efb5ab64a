"""The client distribution (jupyter_exec_client) against real local servers and kernels."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
from jupyter_exec_client import (
    SYSTEM_MESSAGE,
    APIError,
    AsyncJupyterCodeExecutor,
    AuthenticationError,
    CodeBlock,
    ExecutorClosedError,
    ExtensionMissingError,
    IPythonCodeResult,
    JupyterCodeExecutor,
    JupyterConnectable,
    JupyterConnectionInfo,
    JupyterExecError,
    LocalJupyterServer,
    ServerConnectionError,
    ServerStartError,
    UnknownKernelError,
)
from jupyter_exec_client.connection import as_connection_info

from .autogen_compat import (
    check_pip_installs_are_quiet,
    check_shell_blocks_of_ipython_lines_run_in_the_kernel,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalJupyterServer]:
    """One real local server for the module, serving a temporary folder."""
    root = tmp_path_factory.mktemp("server-root")
    with LocalJupyterServer(root_dir=root, log_file=root / "server.log") as running:
        yield running


@pytest.fixture
def executor(server: LocalJupyterServer, tmp_path: Path) -> Iterator[JupyterCodeExecutor]:
    """An executor with a session of its own, saving files into the test's folder."""
    with JupyterCodeExecutor(server, output_dir=tmp_path) as running:
        yield running


def run(executor: JupyterCodeExecutor, code: str, language: str = "python") -> IPythonCodeResult:
    """Run one block."""
    return executor.execute_code_blocks([CodeBlock(code=code, language=language)])


def session_status(server: LocalJupyterServer, session_id: str) -> int:
    """The HTTP status of a GET on the session."""
    info = server.connection_info
    answer = requests.get(
        info.url(f"api/agent-sessions/{session_id}"),
        headers={"Authorization": f"token {info.token}"},
        timeout=30,
    )
    return answer.status_code


def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- state, order, errors ---------------------------------------------------------------------


def test_state_lives_across_calls(executor: JupyterCodeExecutor) -> None:
    assert run(executor, "x = 6 * 7").exit_code == 0
    result = run(executor, "print(x)")
    assert result == IPythonCodeResult(exit_code=0, output="42", output_files=[])


def test_two_executors_on_one_server_are_isolated(
    server: LocalJupyterServer, executor: JupyterCodeExecutor, tmp_path: Path
) -> None:
    run(executor, "secret = 'mine'")
    with JupyterCodeExecutor(server, output_dir=tmp_path) as other:
        assert other.session_id != executor.session_id
        result = run(other, "print(secret)")
    assert result.exit_code == 1
    assert "NameError" in result.output
    assert run(executor, "print(secret)").output == "mine"


def test_blocks_run_in_order_and_stop_at_the_first_failure(executor: JupyterCodeExecutor) -> None:
    result = executor.execute_code_blocks(
        [
            CodeBlock("print('first')", "python"),
            CodeBlock("print('second')\n1 / 0", "python"),
            CodeBlock("third_ran = True\nprint('third')", "python"),
        ]
    )
    assert result.exit_code == 1
    assert result.output.startswith("first\nsecond\n")
    assert "ZeroDivisionError: division by zero" in result.output
    assert "third" not in result.output
    assert run(executor, "print('third_ran' in globals())").output == "False"


def test_blocks_that_all_succeed_give_exit_code_0_and_joined_output(
    executor: JupyterCodeExecutor,
) -> None:
    result = executor.execute_code_blocks(
        [CodeBlock("a = 1\nprint('one')", "python"), CodeBlock("print(a + 1)", "")]
    )
    assert result == IPythonCodeResult(exit_code=0, output="one\n2", output_files=[])
    assert executor.execute_code_blocks([]) == IPythonCodeResult(0, "", [])


def test_error_keeps_earlier_output_and_has_a_plain_traceback(
    executor: JupyterCodeExecutor,
) -> None:
    result = run(executor, "print('before')\ndef f():\n    raise KeyError('missing')\nf()")
    assert result.exit_code == 1
    assert result.output.startswith("before\n")
    assert "Traceback" in result.output
    assert "KeyError: 'missing'" in result.output
    assert "\x1b[" not in result.output


def test_any_object_with_code_and_language_is_a_block(executor: JupyterCodeExecutor) -> None:
    @dataclass
    class ForeignBlock:  # stands for AutoGen's pydantic CodeBlock
        code: str
        language: str

    result = executor.execute_code_blocks([ForeignBlock("print('duck')", "python")])
    assert result.output == "duck"


# -- rich output ------------------------------------------------------------------------------


def test_matplotlib_figure_is_saved_as_png(executor: JupyterCodeExecutor, tmp_path: Path) -> None:
    result = run(
        executor,
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('a plot')\nplt.show()",
    )
    assert result.exit_code == 0
    assert len(result.output_files) == 1
    path = Path(result.output_files[0])
    assert path.is_absolute()
    assert path.parent == tmp_path.resolve()
    assert path.suffix == ".png"
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert f"Image data saved to {path}" in result.output
    assert "[image/png:" not in result.output
    assert "iVBOR" not in result.output  # no base64 PNG


def test_html_is_saved_as_a_file(executor: JupyterCodeExecutor, tmp_path: Path) -> None:
    result = run(
        executor,
        "from IPython.display import HTML, display\ndisplay(HTML('<b>bold move</b>'))",
    )
    assert result.exit_code == 0
    (path,) = map(Path, result.output_files)
    assert path.parent == tmp_path.resolve()
    assert path.suffix == ".html"
    assert "<b>bold move</b>" in path.read_text()
    assert f"HTML data saved to {path}" in result.output


def test_jpeg_and_svg_are_files_not_base64(executor: JupyterCodeExecutor) -> None:
    result = run(
        executor,
        textwrap.dedent(
            """\
            import io
            from PIL import Image as PILImage
            from IPython.display import Image, SVG, display
            buffer = io.BytesIO()
            PILImage.new("RGB", (100, 100), "red").save(buffer, format="JPEG")
            display(Image(data=buffer.getvalue(), format="jpeg"))
            display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9">'
                        '<rect width="9" height="9"/></svg>'))
            """
        ),
    )
    assert result.exit_code == 0
    jpeg, svg = map(Path, result.output_files)
    assert jpeg.suffix == ".jpeg"
    assert jpeg.read_bytes().startswith(JPEG_MAGIC)
    assert svg.suffix == ".svg"
    assert "<rect" in svg.read_text()
    assert f"Image data saved to {jpeg}" in result.output
    assert f"Image data saved to {svg}" in result.output
    assert "/9j/" not in result.output  # no base64 JPEG
    assert "<rect" not in result.output
    assert len(result.output) < 400


def test_huge_output_is_cut_and_the_whole_text_saved(executor: JupyterCodeExecutor) -> None:
    result = run(executor, "print('x' * 300_000)")
    assert result.exit_code == 0
    assert len(result.output) < 150_000
    assert "characters cut" in result.output
    (path,) = map(Path, result.output_files)
    assert path.suffix == ".txt"
    assert f"saved to {path}" in result.output
    assert path.read_text() == "x" * 300_000 + "\n"


# -- languages --------------------------------------------------------------------------------


def test_bash_block_runs_in_the_session(executor: JupyterCodeExecutor) -> None:
    result = run(executor, "echo hello-$((6 * 7))\npwd", "bash")
    assert result.exit_code == 0
    assert result.output.startswith("hello-42\n")
    assert run(executor, "echo from-sh", "sh").output == "from-sh"
    assert run(executor, "echo from-shell", "shell").output == "from-shell"


def test_failing_shell_command_fails_the_block(executor: JupyterCodeExecutor) -> None:
    result = executor.execute_code_blocks(
        [CodeBlock("echo before\nexit 3", "bash"), CodeBlock("print('after')", "python")]
    )
    assert result.exit_code == 1
    assert result.output.startswith("before\n")
    assert "exit status 3" in result.output
    assert "after" not in result.output
    assert run(executor, "false", "sh").exit_code == 1


def test_unknown_language_fails_without_being_run(executor: JupyterCodeExecutor) -> None:
    result = executor.execute_code_blocks(
        [CodeBlock("print('python ran')", "python"), CodeBlock("marker = 1", "rust")]
    )
    assert result.exit_code == 1
    assert result.output.startswith("python ran\n")
    assert "Unsupported language 'rust'" in result.output
    assert run(executor, "print('marker' in globals())").output == "False"


@pytest.mark.timeout(120)
def test_pip_installs_are_quiet_and_failures_still_show(executor: JupyterCodeExecutor) -> None:
    check_pip_installs_are_quiet(executor)


def test_shell_blocks_of_ipython_lines_run_in_the_kernel(executor: JupyterCodeExecutor) -> None:
    check_shell_blocks_of_ipython_lines_run_in_the_kernel(executor)


def test_autogens_attributes_are_there(
    server: LocalJupyterServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with JupyterCodeExecutor(server, timeout=10, kernel_name="python3", output_dir=".") as sync:
        # As AutoGen keeps them: the output folder as given, relative here.
        assert (sync._timeout, sync._kernel_name, sync._output_dir) == (10, "python3", Path())
        assert sync.output_dir == tmp_path.resolve()
        assert sync._kernel_id == sync.kernel_id is not None
        assert sync._connection_info == server.connection_info
    unstarted = AsyncJupyterCodeExecutor(server, timeout=5, output_dir=tmp_path)
    assert (unstarted._timeout, unstarted._kernel_name) == (5, "python3")
    assert unstarted._output_dir == tmp_path
    assert unstarted._kernel_id is None


# -- timeouts, dead kernels, restart, stop ----------------------------------------------------


@pytest.mark.timeout(90)
def test_timeout_interrupts_and_keeps_output_and_state(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    with JupyterCodeExecutor(server, timeout=2, output_dir=tmp_path) as executor:
        result = run(
            executor,
            "kept = 41\nprint('started', flush=True)\nimport time\ntime.sleep(600)\nkept = 0",
        )
        assert result.exit_code == 1
        assert result.output.startswith("started\n")
        # "Timeout" is AutoGen's word for it, which agents written for it look for.
        assert "Timeout: execution exceeded the timeout of 2 s" in result.output
        # The kernel was interrupted, not left running: with the sleep still going, this
        # call would wait for it past the test's time limit.
        assert run(executor, "print(kept + 1)") == IPythonCodeResult(0, "42", [])


@pytest.mark.slow
def test_dead_kernel_is_reported_and_the_next_call_works(executor: JupyterCodeExecutor) -> None:
    run(executor, "before_death = 1")
    result = run(executor, "import os\nos._exit(1)")
    assert result.exit_code == 1
    assert "kernel died" in result.output
    after = run(executor, "print('before_death' in globals())")
    assert after == IPythonCodeResult(0, "False", [])


def test_restart_clears_state(executor: JupyterCodeExecutor) -> None:
    run(executor, "y = 1")
    session_id = executor.session_id
    executor.restart()
    assert executor.session_id == session_id
    result = run(executor, "y")
    assert result.exit_code == 1
    assert "NameError" in result.output


def test_stop_deletes_the_session(server: LocalJupyterServer, tmp_path: Path) -> None:
    executor = JupyterCodeExecutor(server, output_dir=tmp_path)
    session_id = executor.session_id
    assert session_id is not None
    assert session_status(server, session_id) == 200
    executor.stop()
    assert session_status(server, session_id) == 404
    assert executor.closed
    executor.stop()  # stopping twice is harmless
    with pytest.raises(ExecutorClosedError):
        run(executor, "1")


def test_context_manager_deletes_the_session(server: LocalJupyterServer, tmp_path: Path) -> None:
    with JupyterCodeExecutor(server, output_dir=tmp_path) as executor:
        session_id = executor.session_id
        assert session_id is not None
    assert session_status(server, session_id) == 404


def test_restart_recovers_a_session_the_server_lost(
    server: LocalJupyterServer, executor: JupyterCodeExecutor
) -> None:
    info = server.connection_info
    requests.delete(
        info.url(f"api/agent-sessions/{executor.session_id}"),
        headers={"Authorization": f"token {info.token}"},
        timeout=30,
    ).raise_for_status()
    # (A call would say the session was lost and replace it: tests/test_restart.py.)
    lost = executor.session_id
    executor.restart()
    assert executor.session_id != lost
    assert run(executor, "print('back')").output == "back"


# -- arguments and errors ---------------------------------------------------------------------


def test_wrong_token_raises_authentication_error(server: LocalJupyterServer) -> None:
    info = server.connection_info
    wrong = JupyterConnectionInfo(info.host, False, info.port, token="not-the-token")
    with pytest.raises(AuthenticationError) as caught:
        JupyterCodeExecutor(wrong)
    assert caught.value.status == 403
    assert isinstance(caught.value, APIError)
    assert isinstance(caught.value, JupyterExecError)
    assert "token" in str(caught.value)


def test_unreachable_server_raises_server_connection_error() -> None:
    port = closed_port()
    with pytest.raises(ServerConnectionError) as caught:
        JupyterCodeExecutor(JupyterConnectionInfo("127.0.0.1", False, port, token="t"))
    assert isinstance(caught.value, ConnectionError)
    assert f"http://127.0.0.1:{port}/" in str(caught.value)
    assert "refused" in str(caught.value)


def test_unknown_kernel_raises_unknown_kernel_error(server: LocalJupyterServer) -> None:
    # The message AutoGen's own tests match for its ValueError.
    with pytest.raises(UnknownKernelError, match=r"Kernel .* is not installed\.") as caught:
        JupyterCodeExecutor(server, kernel_name="cobol")
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith("Kernel 'cobol' is not installed.")
    assert caught.value.kernel_name == "cobol"
    assert "python3" in caught.value.available_kernels
    assert "python3" in str(caught.value)


def test_bad_arguments_raise_value_error_before_any_request(tmp_path: Path) -> None:
    nowhere = JupyterConnectionInfo("127.0.0.1", False, closed_port())
    with pytest.raises(ValueError, match="does not exist"):
        JupyterCodeExecutor(nowhere, output_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        JupyterCodeExecutor(nowhere, timeout=0, output_dir=tmp_path)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        AsyncJupyterCodeExecutor(nowhere, timeout=0.5, output_dir=tmp_path)


def test_wrong_base_path_says_no_agent_session_api_is_there(
    server: LocalJupyterServer,
) -> None:
    info = server.connection_info
    elsewhere = JupyterConnectionInfo(
        info.host, False, info.port, token=info.token, base_path="/not/here/"
    )
    with pytest.raises(ExtensionMissingError, match=r"base path") as caught:
        JupyterCodeExecutor(elsewhere)
    assert caught.value.status == 404
    assert "/not/here/" in str(caught.value)


def test_redirect_to_a_login_page_is_an_api_error() -> None:
    class LoginRedirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", "/hub/login?next=%2Fuser%2Falice%2F")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output clean

    with http.server.HTTPServer(("127.0.0.1", 0), LoginRedirect) as proxy:
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        try:
            port = proxy.server_address[1]
            with pytest.raises(APIError, match="redirected to /hub/login") as caught:
                JupyterCodeExecutor(JupyterConnectionInfo("127.0.0.1", False, port, token="t"))
            assert caught.value.status == 302
        finally:
            proxy.shutdown()
            thread.join()


@pytest.mark.slow
def test_server_without_the_extension_is_named(tmp_path: Path) -> None:
    port = closed_port()
    command = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={tmp_path}",
        "--ServerApp.jpserver_extensions=jupyter_exec_ext=False",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = {**os.environ, "JUPYTER_TOKEN": "plain"}
    with (tmp_path / "plain.log").open("wb") as log:
        plain = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        info = JupyterConnectionInfo("127.0.0.1", False, port, token="plain")
        while True:
            assert plain.poll() is None, (tmp_path / "plain.log").read_text()
            try:
                requests.get(info.url("api"), timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        with pytest.raises(ExtensionMissingError, match="has no agent-session API") as caught:
            JupyterCodeExecutor(info, fallback=False)
        assert "jupyter-exec-ext" in str(caught.value)
    finally:
        plain.terminate()
        plain.wait(30)


def test_connection_info_urls_and_repr() -> None:
    info = JupyterConnectionInfo.from_url("https://hub.example.org/user/alice", token="secret")
    assert info == JupyterConnectionInfo(
        "hub.example.org", True, None, "secret", base_path="/user/alice"
    )
    assert info.base_url == "https://hub.example.org/user/alice/"
    assert info.url("api/agent-sessions") == "https://hub.example.org/user/alice/api/agent-sessions"
    assert info.url("/user/alice/api/x") == "https://hub.example.org/user/alice/api/x"
    assert "secret" not in repr(info)
    assert JupyterConnectionInfo("::1", False, 8888).base_url == "http://[::1]:8888/"
    with pytest.raises(ValueError, match="Not an http"):
        JupyterConnectionInfo.from_url("ftp://example.org/")


def test_autogens_connection_info_is_accepted() -> None:
    @dataclass
    class AutoGenConnectionInfo:  # the fields of autogen.coding.jupyter.JupyterConnectionInfo
        host: str
        use_https: bool
        port: int | None = None
        token: str | None = None

    converted = as_connection_info(AutoGenConnectionInfo("localhost", False, 8888, "t"))
    assert converted == JupyterConnectionInfo("localhost", False, 8888, "t")
    with pytest.raises(TypeError, match="connection_info"):
        as_connection_info("http://localhost:8888")


def test_local_server_is_connectable(server: LocalJupyterServer) -> None:
    assert isinstance(server, JupyterConnectable)
    info = server.connection_info
    assert info.host == "127.0.0.1"
    assert info.token is not None
    assert len(info.token) == 64
    assert info.token not in repr(server)


# -- the async executor -----------------------------------------------------------------------


def test_async_executor_runs_blocks_with_state_files_and_failures(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with AsyncJupyterCodeExecutor(server, output_dir=tmp_path) as executor:
            session_id = executor.session_id
            assert session_id is not None
            assert (await executor.execute_code_blocks([CodeBlock("z = 5")])).exit_code == 0
            result = await executor.execute_code_blocks(
                [
                    CodeBlock("print(z)", "python"),
                    CodeBlock("import matplotlib.pyplot as plt\nplt.plot([1])\nplt.show()"),
                    CodeBlock("raise RuntimeError('boom')", "python"),
                    CodeBlock("print('not run')", "python"),
                ]
            )
            assert result.exit_code == 1
            assert result.output.startswith("5\n")
            assert "RuntimeError: boom" in result.output
            assert "not run" not in result.output
            (png,) = result.output_files
            assert f"Image data saved to {png}" in result.output
            shell = await executor.execute_code_blocks([CodeBlock("exit 4", "bash")])
            assert shell.exit_code == 1
            await executor.restart()
            assert "NameError" in (await executor.execute_code_blocks([CodeBlock("z")])).output
        assert executor.closed
        assert session_status(server, session_id) == 404

    asyncio.run(scenario())


@pytest.mark.timeout(90)
def test_async_timeout_and_cancellation_interrupt_the_kernel(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    class CancellationToken:  # the shape of autogen_core's CancellationToken
        def __init__(self) -> None:
            self.futures: list[asyncio.Future[object]] = []

        def link_future(self, future: asyncio.Future[object]) -> asyncio.Future[object]:
            self.futures.append(future)
            return future

        def cancel(self) -> None:
            for future in self.futures:
                future.cancel()

    sleeper = "print('going', flush=True)\nimport time\ntime.sleep(600)"

    def wait_until_busy(session_id: str) -> None:
        info = server.connection_info
        url = info.url(f"api/agent-sessions/{session_id}")
        headers = {"Authorization": f"token {info.token}"}
        while requests.get(url, headers=headers, timeout=30).json()["status"] != "busy":
            time.sleep(0.05)

    async def scenario() -> None:
        async with AsyncJupyterCodeExecutor(server, timeout=2, output_dir=tmp_path) as quick:
            result = await quick.execute_code_blocks([CodeBlock("v = 1"), CodeBlock(sleeper)])
            assert result.exit_code == 1
            assert result.output.startswith("going\n")
            assert "Timeout: execution exceeded the timeout of 2 s" in result.output
            assert (await quick.execute_code_blocks([CodeBlock("print(v)")])).output == "1"

        # Uncancelled, this call would run past the test's time limit.
        async with AsyncJupyterCodeExecutor(server, timeout=600, output_dir=tmp_path) as slow:
            assert slow.session_id is not None
            token = CancellationToken()
            # Set in a call of its own: "busy" must mean the sleeper runs, not this line.
            await slow.execute_code_blocks([CodeBlock("w = 2")])
            call = asyncio.ensure_future(slow.execute_code_blocks([CodeBlock(sleeper)], token))
            await asyncio.to_thread(wait_until_busy, slow.session_id)
            token.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            after = await slow.execute_code_blocks([CodeBlock("print(w)")])
            assert after == IPythonCodeResult(0, "2", [])

    asyncio.run(scenario())


def test_async_executor_errors(server: LocalJupyterServer) -> None:
    info = server.connection_info
    wrong = JupyterConnectionInfo(info.host, False, info.port, token="wrong")

    async def scenario() -> None:
        with pytest.raises(AuthenticationError):
            await AsyncJupyterCodeExecutor(wrong).start()
        with pytest.raises(UnknownKernelError, match=r"Kernel 'nope' is not installed\."):
            async with AsyncJupyterCodeExecutor(server, kernel_name="nope"):
                pass

    asyncio.run(scenario())


# -- the code extractor and the system message ------------------------------------------------


def test_code_extractor_finds_fenced_blocks(executor: JupyterCodeExecutor) -> None:
    message = (
        "First:\n```python\nx = 1\n```\nthen\n```bash\necho hi\n```\n"
        "and without a language:\n```\nprint(x)\n```\n"
    )
    extract = executor.code_extractor.extract_code_blocks
    expected = [
        CodeBlock("x = 1", "python"),
        CodeBlock("echo hi", "bash"),
        CodeBlock("print(x)", "python"),
    ]
    assert extract(message) == expected
    assert extract({"role": "assistant", "content": message}) == expected
    assert extract([{"type": "text", "text": message}, {"type": "image_url"}]) == expected
    assert extract("no code here") == []
    assert extract(None) == []
    result = executor.execute_code_blocks(extract(message))
    assert result == IPythonCodeResult(0, "hi\n1", [])


def test_system_message_explains_the_kernel() -> None:
    assert "stateful" in SYSTEM_MESSAGE
    assert "```python" in SYSTEM_MESSAGE
    assert "Image data saved to" in SYSTEM_MESSAGE


# -- packaging and the local server -----------------------------------------------------------


def test_import_is_light() -> None:
    heavy = ["jupyter_server", "tornado", "zmq", "ipykernel", "jupyter_client", "jupyter_core"]
    heavy += ["IPython"]
    code = (
        "import sys, jupyter_exec_client, jupyter_exec_client.cli\n"
        f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_local_server_needs_the_extension_in_this_python(tmp_path: Path) -> None:
    # sys.modules[name] = None is how Python marks a module that cannot be imported.
    code = textwrap.dedent(
        f"""\
        import sys
        sys.modules["jupyter_exec_ext"] = None
        from jupyter_exec_client import LocalJupyterServer, ServerStartError
        try:
            LocalJupyterServer(root_dir={str(tmp_path)!r}, log_file={str(tmp_path / "l")!r})
        except ServerStartError as e:
            print(e)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "jupyter_exec_ext cannot be imported" in done.stdout
    assert "pip install" in done.stdout or "install jupyter-exec-ext" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_stopping_the_local_server_leaves_no_process(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    local = LocalJupyterServer(root_dir=tmp_path, log_file=log_file, kernel_pool=1)
    assert local.running
    # The session is left running: stopping the server must take its kernel down.
    executor = JupyterCodeExecutor(local, output_dir=tmp_path)
    result = run(
        executor,
        "import subprocess\nchild = subprocess.Popen(['sleep', '300'])\nprint(child.pid)",
    )
    assert result.exit_code == 0
    sleeper_pid = int(result.output)
    assert local.pid is not None
    tree = psutil.Process(local.pid)
    processes = [tree, *tree.children(recursive=True)]
    pids = {process.pid for process in processes}
    assert sleeper_pid in pids
    assert len(pids) >= 3  # the server, the session's kernel, the sleeper (and a pooled kernel)
    local.stop()
    assert not local.running
    _gone, alive = psutil.wait_procs(processes, timeout=10)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    assert "Jupyter Server" in log_file.read_text()
    local.stop()  # stopping twice is harmless
    with pytest.raises(ServerConnectionError):
        executor.stop()
    assert executor.closed


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_local_server_stops_when_the_interpreter_exits(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""\
        import json, psutil
        from jupyter_exec_client import LocalJupyterServer, JupyterCodeExecutor, CodeBlock
        server = LocalJupyterServer(root_dir={str(tmp_path)!r}, log_file={str(tmp_path / "l")!r})
        executor = JupyterCodeExecutor(server, output_dir={str(tmp_path)!r})
        executor.execute_code_blocks([CodeBlock("1")])
        tree = psutil.Process(server.pid)
        print(json.dumps([tree.pid] + [p.pid for p in tree.children(recursive=True)]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=150
    )
    pids = json.loads(done.stdout)
    assert len(pids) >= 2
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _gone, alive = psutil.wait_procs(processes, timeout=10)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []


@pytest.mark.slow
def test_local_server_without_the_extension_loaded_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="extension did not load"):
        LocalJupyterServer(
            root_dir=tmp_path,
            log_file=tmp_path / "server.log",
            extra_args=["--ServerApp.jpserver_extensions=jupyter_exec_ext=False"],
        )


def test_local_server_start_failure_shows_the_log(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="exited with status") as caught:
        LocalJupyterServer(
            root_dir=tmp_path,
            log_file=tmp_path / "bad.log",
            extra_args=["--ServerApp.port=-5"],
        )
    assert str(tmp_path / "bad.log") in str(caught.value)
