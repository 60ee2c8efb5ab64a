"""The client against servers without the agent-session API: kernels API and kernel websocket.

Two real servers: a plain ``jupyter kernelgateway`` started the way AutoGen's custom images
must start it, and a plain ``jupyter server`` with the extension disabled (under a base_url,
so a hard-coded ``/api/...`` shows up).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from jupyter_exec_client import (
    AsyncJupyterCodeExecutor,
    AuthenticationError,
    BackgroundUnsupportedError,
    CodeBlock,
    Display,
    ExecutorClosedError,
    ExtensionMissingError,
    IPythonCodeResult,
    JupyterCodeExecutor,
    JupyterConnectionInfo,
    UnknownKernelError,
)
from jupyter_exec_client._kernel_output import OutputCollector
from jupyter_exec_client.local_server import _other_extensions

from .autogen_compat import (
    check_pip_installs_are_quiet,
    check_shell_blocks_of_ipython_lines_run_in_the_kernel,
)
from .conftest import free_port

TOKEN = "fallback-test-token"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("websocket") is None,
    reason='websocket-client is not installed (pip install "./client[websocket]")',
)


@dataclass
class PlainServer:
    """A running server without the agent-session API."""

    connection_info: JupyterConnectionInfo
    process: subprocess.Popen[bytes]
    log_path: Path

    def kernel_ids(self) -> set[str]:
        """Ids of the kernels the server lists at ``api/kernels``."""
        info = self.connection_info
        answer = requests.get(
            info.url("api/kernels"), headers={"Authorization": f"token {TOKEN}"}, timeout=30
        )
        answer.raise_for_status()
        return {kernel["id"] for kernel in answer.json()}


def _start(command: list[str], info: JupyterConnectionInfo, folder: Path) -> PlainServer:
    """Run ``command`` in ``folder`` and wait until ``api/kernelspecs`` answers."""
    log_path = folder / "server.log"
    env = {
        **os.environ,
        "JUPYTER_TOKEN": TOKEN,
        "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = PlainServer(info, process, log_path)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"The server exited:\n{log_path.read_text()}"
        assert time.monotonic() < deadline, f"No answer:\n{log_path.read_text()}"
        try:
            answer = requests.get(
                info.url("api/kernelspecs"),
                headers={"Authorization": f"token {TOKEN}"},
                timeout=5,
            )
            if answer.status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)


def _stop(server: PlainServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(10)


@pytest.fixture(scope="module")
def kernel_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainServer]:
    """``jupyter kernelgateway`` as the seed's custom-image rules start it, with a token."""
    if importlib.util.find_spec("kernel_gateway") is None:
        pytest.skip("jupyter_kernel_gateway is not installed")
    folder = tmp_path_factory.mktemp("gateway")
    port = free_port()
    command = [
        sys.executable, "-m", "jupyter", "kernelgateway",
        f"--KernelGatewayApp.auth_token={TOKEN}",
        "--JupyterApp.answer_yes=true",
        "--JupyterWebsocketPersonality.list_kernels=true",
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        "--KernelGatewayApp.port_retries=0",
    ]  # fmt: skip
    info = JupyterConnectionInfo("127.0.0.1", False, port, token=TOKEN)
    server = _start(command, info, folder)
    try:
        yield server
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def plain_jupyter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainServer]:
    """``jupyter server`` with the (auto-enabled) extension disabled, under a base_url."""
    folder = tmp_path_factory.mktemp("plain-server")
    port = free_port()
    command = [
        sys.executable, "-m", "jupyter_server", "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.base_url=/prefix/jupyter/",
        f"--ServerApp.root_dir={folder}",
        # The documented dict form ('{"jupyter_exec_ext": false}') is read as a list by
        # traitlets' command line; name=False is what disables an extension there.
        "--ServerApp.jpserver_extensions=jupyter_exec_ext=False",
        *(f"--ServerApp.jpserver_extensions={name}=False" for name in _other_extensions()),
    ]  # fmt: skip
    if os.geteuid() == 0:
        command.append("--allow-root")
    info = JupyterConnectionInfo(
        "127.0.0.1", False, port, token=TOKEN, base_path="/prefix/jupyter/"
    )
    server = _start(command, info, folder)
    try:
        yield server
    finally:
        _stop(server)


@pytest.fixture(params=["kernel-gateway", "plain-jupyter-server"])
def server(request: pytest.FixtureRequest) -> PlainServer:
    """Each test runs against both kinds of server."""
    fixture = "kernel_gateway" if request.param == "kernel-gateway" else "plain_jupyter_server"
    running: PlainServer = request.getfixturevalue(fixture)
    return running


@pytest.fixture
def executor(server: PlainServer, tmp_path: Path) -> Iterator[JupyterCodeExecutor]:
    """An executor on the server's kernels API, saving files into the test's folder."""
    with JupyterCodeExecutor(server.connection_info, timeout=20, output_dir=tmp_path) as running:
        yield running


def run(executor: JupyterCodeExecutor, code: str, language: str = "python") -> IPythonCodeResult:
    """Run one block."""
    return executor.execute_code_blocks([CodeBlock(code=code, language=language)])


def test_state_lives_across_calls_on_a_kernel_of_its_own(
    server: PlainServer, executor: JupyterCodeExecutor
) -> None:
    assert executor.backend == "kernels"
    assert executor.session_id is None
    assert executor.kernel_id in server.kernel_ids()
    assert run(executor, "x = 6 * 7").exit_code == 0
    assert run(executor, "print(x)") == IPythonCodeResult(0, "42", [])
    assert run(executor, "echo shell-$((1 + 1))", "bash").output == "shell-2"


def test_error_keeps_earlier_output_and_has_a_plain_traceback(
    executor: JupyterCodeExecutor,
) -> None:
    result = executor.execute_code_blocks(
        [
            CodeBlock("print('first')"),
            CodeBlock("print('before')\ndef f():\n    raise KeyError('missing')\nf()"),
            CodeBlock("print('not run')"),
        ]
    )
    assert result.exit_code == 1
    assert result.output.startswith("first\nbefore\n")
    assert "Traceback" in result.output
    assert "KeyError: 'missing'" in result.output
    assert "\x1b[" not in result.output
    assert "not run" not in result.output


def test_input_fails_at_once(executor: JupyterCodeExecutor) -> None:
    result = run(executor, "input('name? ')")
    assert result.exit_code == 1
    assert "StdinNotImplementedError" in result.output


def test_images_and_html_are_saved_as_files(executor: JupyterCodeExecutor, tmp_path: Path) -> None:
    result = run(
        executor,
        textwrap.dedent(
            """\
            import io
            import matplotlib
            matplotlib.use("module://matplotlib_inline.backend_inline")
            import matplotlib.pyplot as plt
            from PIL import Image as PILImage
            from IPython.display import HTML, SVG, Image, display
            plt.plot([1, 3, 2])
            plt.show()
            buffer = io.BytesIO()
            PILImage.new("RGB", (100, 100), "red").save(buffer, format="JPEG")
            display(Image(data=buffer.getvalue(), format="jpeg"))
            display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9">'
                        '<rect width="9" height="9"/></svg>'))
            display(HTML('<b>bold move</b>'))
            """
        ),
    )
    assert result.exit_code == 0, result.output
    png, jpeg, svg, html = map(Path, result.output_files)
    for path in (png, jpeg, svg, html):
        assert path.parent == tmp_path.resolve()
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert jpeg.read_bytes().startswith(JPEG_MAGIC)
    assert "<rect" in svg.read_text()
    assert "<b>bold move</b>" in html.read_text()
    for image in (png, jpeg, svg):
        assert f"Image data saved to {image}" in result.output
    assert f"HTML data saved to {html}" in result.output
    assert "iVBOR" not in result.output  # no base64 PNG
    assert "/9j/" not in result.output  # no base64 JPEG
    assert "<rect" not in result.output


def test_huge_output_is_cut_and_the_whole_text_saved(executor: JupyterCodeExecutor) -> None:
    result = run(executor, "print('x' * 300_000)\nprint('the end')")
    assert result.exit_code == 0
    assert len(result.output) < 150_000
    assert "characters cut" in result.output
    assert result.output.startswith("xxx")
    assert result.output.endswith("the end")
    (path,) = map(Path, result.output_files)
    assert path.suffix == ".txt"
    assert f"saved to {path}" in result.output
    assert path.read_text() == "x" * 300_000 + "\nthe end\n"


@pytest.mark.timeout(120)
def test_pip_installs_are_quiet_and_failures_still_show(executor: JupyterCodeExecutor) -> None:
    # The kernel has no kernel_helper here: the client adds -qqq to the lines it sends.
    check_pip_installs_are_quiet(executor)


def test_shell_blocks_of_ipython_lines_run_in_the_kernel(executor: JupyterCodeExecutor) -> None:
    check_shell_blocks_of_ipython_lines_run_in_the_kernel(executor)


@pytest.mark.parametrize(
    "code", ["'x' * 300_000", "raise ValueError('x' * 300_000)"], ids=["result", "error"]
)
def test_huge_results_and_errors_are_cut_like_prints(
    executor: JupyterCodeExecutor, code: str
) -> None:
    result = run(executor, code)
    assert len(result.output) < 150_000
    assert "characters cut" in result.output
    (path,) = map(Path, result.output_files)
    assert path.read_text().count("x") >= 300_000


def test_the_collector_cuts_every_text_of_an_item(tmp_path: Path) -> None:
    collector = OutputCollector(tmp_path, max_chars=1000)
    collector.handle("execute_result", {"data": {"text/plain": "r" * 5000}, "execution_count": 1})
    collector.handle("error", {"ename": "E", "evalue": "v" * 5000, "traceback": ["t" * 5000]})
    result = collector.result("error", 1)
    [item] = [item for item in result["outputs"] if item["type"] == "result"]
    assert len(item["text"]) < 1100
    assert item["truncated"] is True
    assert len(result["error"]["evalue"]) < 1100
    assert len("\n".join(result["error"]["traceback"])) < 1100


@pytest.mark.timeout(90)
def test_timeout_interrupts_and_keeps_output_and_state(server: PlainServer, tmp_path: Path) -> None:
    with JupyterCodeExecutor(server.connection_info, timeout=2, output_dir=tmp_path) as executor:
        result = run(
            executor,
            "kept = 41\nprint('started', flush=True)\nimport time\ntime.sleep(600)\nkept = 0",
        )
        assert result.exit_code == 1
        assert result.output.startswith("started\n")
        assert "KeyboardInterrupt" in result.output
        assert "Timeout: execution exceeded the timeout of 2 s" in result.output
        # Still sleeping, the kernel would make this call wait past the test's time limit.
        assert run(executor, "print(kept + 1)") == IPythonCodeResult(0, "42", [])


@pytest.mark.slow
def test_dead_kernel_is_reported_and_the_next_call_works(executor: JupyterCodeExecutor) -> None:
    run(executor, "before_death = 1")
    result = run(executor, "import os\nos._exit(1)")
    assert result.exit_code == 1
    assert "kernel died" in result.output
    assert "new kernel has been started" in result.output
    after = run(executor, "print('before_death' in globals())")
    assert after == IPythonCodeResult(0, "False", [])


def test_restart_clears_state(executor: JupyterCodeExecutor) -> None:
    run(executor, "y = 1")
    kernel_id = executor.kernel_id
    executor.restart()
    assert executor.kernel_id == kernel_id
    result = run(executor, "y")
    assert result.exit_code == 1
    assert "NameError" in result.output


def test_stop_deletes_the_kernel(server: PlainServer, tmp_path: Path) -> None:
    executor = JupyterCodeExecutor(server.connection_info, output_dir=tmp_path)
    kernel_id = executor.kernel_id
    assert kernel_id in server.kernel_ids()
    executor.stop()
    assert kernel_id not in server.kernel_ids()
    executor.stop()  # stopping twice is harmless
    with pytest.raises(ExecutorClosedError):
        run(executor, "1")


def test_wrong_or_missing_token_raises_authentication_error(
    server: PlainServer, tmp_path: Path
) -> None:
    info = server.connection_info
    for token in ("not-the-token", None):
        other = JupyterConnectionInfo(
            info.host, False, info.port, token=token, base_path=info.base_path
        )
        kernels_before = server.kernel_ids()
        with pytest.raises(AuthenticationError) as caught:
            JupyterCodeExecutor(other, output_dir=tmp_path)
        assert caught.value.status in (401, 403)
        assert "token" in str(caught.value)
        assert server.kernel_ids() == kernels_before


def test_unknown_kernel_raises_unknown_kernel_error(server: PlainServer, tmp_path: Path) -> None:
    with pytest.raises(UnknownKernelError, match=r"Kernel 'cobol' is not installed\.") as caught:
        JupyterCodeExecutor(server.connection_info, kernel_name="cobol", output_dir=tmp_path)
    assert caught.value.kernel_name == "cobol"
    assert "python3" in caught.value.available_kernels
    assert "python3" in str(caught.value)


def test_fallback_can_be_turned_off(server: PlainServer, tmp_path: Path) -> None:
    with pytest.raises(ExtensionMissingError, match="has no agent-session API") as caught:
        JupyterCodeExecutor(server.connection_info, output_dir=tmp_path, fallback=False)
    assert caught.value.server_version


def test_async_executor_runs_and_cancels_on_the_kernels_api(
    server: PlainServer, tmp_path: Path
) -> None:
    sleeper = "print('going', flush=True)\nimport time\ntime.sleep(600)"

    async def scenario() -> None:
        info = server.connection_info
        async with AsyncJupyterCodeExecutor(info, timeout=2, output_dir=tmp_path) as executor:
            assert executor.backend == "kernels"
            result = await executor.execute_code_blocks([CodeBlock("v = 1"), CodeBlock(sleeper)])
            assert result.exit_code == 1
            assert result.output.startswith("going\n")
            assert "Timeout: execution exceeded the timeout of 2 s" in result.output
            assert (await executor.execute_code_blocks([CodeBlock("print(v)")])).output == "1"
            # Cancelled, the call interrupts the kernel: the next call does not wait for it.
            marker = tmp_path / "sleeping"
            executor_task = asyncio.ensure_future(
                executor.execute_code_blocks(
                    [CodeBlock(f"w = 2\nopen({str(marker)!r}, 'w').close()\n{sleeper}")]
                )
            )
            while not marker.exists():
                await asyncio.sleep(0.05)
            executor_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await executor_task
            after = await executor.execute_code_blocks([CodeBlock("print(w)")])
            assert after == IPythonCodeResult(0, "2", [])
            kernel_id = executor.kernel_id
        assert executor.closed
        assert kernel_id not in server.kernel_ids()

    asyncio.run(scenario())


def test_missing_websocket_client_is_a_clear_import_error(
    server: PlainServer, tmp_path: Path
) -> None:
    info = server.connection_info
    code = textwrap.dedent(
        f"""\
        import sys
        sys.modules["websocket"] = None  # how Python marks a module that cannot be imported
        from jupyter_exec_client import JupyterCodeExecutor, JupyterConnectionInfo
        info = JupyterConnectionInfo("127.0.0.1", False, {info.port}, token={TOKEN!r},
                                     base_path={info.base_path!r})
        try:
            JupyterCodeExecutor(info, output_dir={str(tmp_path)!r})
        except ImportError as e:
            print(e)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert 'pip install "jupyter-exec-client[websocket]"' in done.stdout


def test_text_like_and_binary_outputs_reach_the_agent(
    executor: JupyterCodeExecutor, tmp_path: Path
) -> None:
    result = run(
        executor,
        "import base64\nfrom IPython.display import Markdown, display\n"
        "display(Markdown('**bold**'))\n"
        "display({'image/gif': base64.b64encode(b'GIF89a-not-really').decode(),"
        " 'application/pdf': base64.b64encode(b'%PDF-1.4').decode(),"
        " 'text/plain': 'two files'}, raw=True)",
    )
    assert result.exit_code == 0, result.output
    gif, pdf = (Path(path) for path in result.output_files)
    assert (gif.suffix, pdf.suffix) == (".gif", ".pdf")
    assert gif.read_bytes() == b"GIF89a-not-really"
    assert pdf.read_bytes() == b"%PDF-1.4"
    assert result.output == (
        f"**bold**\ntwo files\nImage data saved to {gif}\napplication/pdf data saved to {pdf}"
    )


def test_exit_reports_the_lost_state_and_the_next_call_works(executor: JupyterCodeExecutor) -> None:
    assert run(executor, "x = 1").exit_code == 0
    result = run(executor, "exit()")
    assert result.exit_code == 0
    assert "asked the kernel to exit" in result.output
    after = run(executor, "print('fresh'); x")
    assert after.exit_code == 1
    assert "fresh" in after.output
    assert "NameError" in after.output


def test_run_streams_output_and_start_needs_the_extension(
    executor: JupyterCodeExecutor,
) -> None:
    came: list[tuple[float, str]] = []
    displays: list[Display] = []
    code = (
        "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('later', time.time())\n"
        "from IPython.display import HTML\nHTML('<b>x</b>')"
    )
    result = executor.run(
        code,
        on_stdout=lambda text: came.append((time.time(), text)),
        on_result=lambda shown: displays.append(
            Display(shown.text, shown.mime_type, shown.mime_types, [
                path for path in shown.files if path.is_file()
            ])
        ),
    )
    [(first_came, _)] = [c for c in came if c[1] == "first\n"]
    assert first_came < float(came[-1][1].split()[-1])  # while the code still ran
    assert result.exit_code == 0
    [html] = displays
    assert html.files[0].read_text() == "<b>x</b>"
    assert result.output_files == [str(html.files[0])]
    with pytest.raises(BackgroundUnsupportedError, match="background runs need"):
        executor.start("print(1)")
