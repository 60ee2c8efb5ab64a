"""Every output reaches the agent through the client: files on disk, odd text, exit().

The server is a real ``LocalJupyterServer`` started as a user starts it. pytest's
``PYTEST_CURRENT_TEST`` is kept out of its environment: ipykernel does not capture file
descriptors 1 and 2 under pytest, and in real use it does (C extensions' output, ``os.write``,
and the kernel's own log all go through them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_exec_client import CodeBlock, JupyterCodeExecutor, LocalJupyterServer
from jupyter_exec_client import _mime as client_mime

from jupyter_exec_ext import mime as server_mime

from .test_outputs import ANIMATION, GIF_MAGIC, PDF_MAGIC

pytestmark = pytest.mark.timeout(180)

PDF_DISPLAY = (
    "import base64, io\nimport matplotlib.pyplot as plt\nfrom IPython.display import display\n"
    "fig = plt.figure(); plt.plot([1, 2]); b = io.BytesIO(); fig.savefig(b, format='pdf')\n"
    "plt.close(fig)\n"
    "display({'application/pdf': base64.b64encode(b.getvalue()).decode(),"
    " 'text/plain': 'a pdf'}, raw=True)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalJupyterServer]:
    """A local server whose kernels run as they do outside pytest."""
    root = tmp_path_factory.mktemp("server-root")
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        running = LocalJupyterServer(root_dir=root, log_file=root / "server.log")
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved
    with running:
        yield running


@pytest.fixture
def executor(server: LocalJupyterServer, tmp_path: Path) -> Iterator[JupyterCodeExecutor]:
    """An executor with a session of its own, saving files into the test's folder."""
    with JupyterCodeExecutor(server, output_dir=tmp_path) as running:
        yield running


def run(executor: JupyterCodeExecutor, code: str) -> tuple[int, str, list[str]]:
    """Run one Python block: exit code, output and saved files."""
    result = executor.execute_code_blocks([CodeBlock(code=code, language="python")])
    return result.exit_code, result.output, result.output_files


def test_markdown_reaches_the_model_as_text(executor: JupyterCodeExecutor) -> None:
    code, output, files = run(
        executor, "from IPython.display import Markdown, display\ndisplay(Markdown('**bold**'))"
    )
    assert (code, output, files) == (0, "**bold**", [])


@pytest.mark.parametrize(
    ("source", "suffix", "magic"),
    [(ANIMATION, ".gif", GIF_MAGIC), (PDF_DISPLAY, ".pdf", PDF_MAGIC)],
    ids=["gif-animation", "pdf"],
)
def test_binary_outputs_are_downloaded_into_output_dir(
    executor: JupyterCodeExecutor, tmp_path: Path, source: str, suffix: str, magic: bytes
) -> None:
    code, output, files = run(executor, source)
    assert code == 0, output
    [saved] = files
    path = Path(saved)
    assert path.parent == tmp_path
    assert path.suffix == suffix
    assert path.read_bytes().startswith(magic)
    assert f"data saved to {path}" in output


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_lone_surrogates_keep_the_line_and_no_kernel_log_appears(
    executor: JupyterCodeExecutor, stream: str
) -> None:
    code, output, _ = run(
        executor, f"import sys\nprint('a\\ud800b c\\udcffd', file=sys.{stream})\nprint('after')"
    )
    assert code == 0
    assert "a\\ud800b c\\xffd" in output
    assert "after" in output
    assert "ZMQStream" not in output
    assert "Traceback" not in output


def test_bytes_written_to_the_descriptors_are_replaced_not_lost(
    executor: JupyterCodeExecutor,
) -> None:
    code, output, _ = run(
        executor,
        "import os, time\nos.write(1, b'out \\xff\\xfe end\\n')\nos.write(2, b'err \\xc3 end\\n')\n"
        "time.sleep(0.3)",
    )
    assert code == 0
    assert "out \ufffd\ufffd end" in output
    assert "err \ufffd end" in output


def test_the_kernels_own_log_stays_out_of_the_output(executor: JupyterCodeExecutor) -> None:
    # Tornado runs the kernel's message loops and logs their failures, as it did for the
    # surrogates above before the kernel helper escaped them.
    code, output, _ = run(
        executor,
        "import logging, time\n"
        "logging.getLogger('tornado.general').error('Uncaught exception in ZMQStream callback')\n"
        "print('mine')\ntime.sleep(0.3)",
    )
    assert code == 0
    assert output == "mine"


def test_exit_reports_the_lost_state_and_the_next_call_works(
    executor: JupyterCodeExecutor,
) -> None:
    assert run(executor, "x = 1")[0] == 0
    code, output, _ = run(executor, "exit()")
    assert code == 0
    assert "asked the kernel to exit" in output
    code, output, _ = run(executor, "print('fresh'); x")
    assert code == 1
    assert "fresh" in output
    assert "NameError" in output


BUNDLES = [
    {"text/plain": "p"},
    {"text/plain": "<Markdown object>", "text/markdown": "# m"},
    {"text/latex": "$x$", "text/plain": "x"},
    {"application/json": {"a": [1]}, "text/plain": "<JSON object>"},
    {"text/html": "<b>x</b>", "text/plain": "x"},
    {"image/png": "iVBO", "image/svg+xml": "<svg/>", "text/html": "<p/>", "text/plain": "f"},
    {"image/svg+xml": "<svg/>"},
    {"image/gif": "R0lG", "application/pdf": "JVBE", "text/csv": "a,b"},
    {"image/x-icon": "AAAB", "application/vnd.plotly.v1+json": {"data": []}},
    {"application/javascript": "alert(1)", "video/mp4": "AAAA"},
    {},
]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_client_and_server_read_a_bundle_alike(bundle: dict[str, object]) -> None:
    # The client cannot import the server's rules, so it has a copy: the two must agree.
    assert client_mime.choose(bundle).__dict__ == server_mime.choose(bundle).__dict__
    for mime_type, value in bundle.items():
        try:
            server = server_mime.payload(mime_type, value)
        except server_mime.UnusableDataError:
            with pytest.raises(client_mime.UnusableDataError):
                client_mime.payload(mime_type, value)
        else:
            assert client_mime.payload(mime_type, value) == server
