"""The ``jupyter-exec`` command line, run as a real process against real servers."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_exec_client import JupyterCodeExecutor, LocalJupyterServer
from jupyter_exec_client.cli import Cell, split_cells

#: The console script installed with the client, beside this Python.
JUPYTER_EXEC = Path(sys.executable).with_name("jupyter-exec")

SCRIPT = textwrap.dedent(
    """\
    # A script in the percent format.
    total = sum(range(10))

    # %% printing
    print("total is", total)

    # %% [markdown]
    # Not code: skipped.

    # %% plotting
    import matplotlib.pyplot as plt
    plt.plot([1, 2, 3])
    plt.show()
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalJupyterServer]:
    """One real local server for the module."""
    root = tmp_path_factory.mktemp("cli-server-root")
    with LocalJupyterServer(root_dir=root, log_file=root / "server.log") as running:
        yield running


def jupyter_exec(
    *args: str, server: LocalJupyterServer | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the command; with ``server``, pointed at it through the environment variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_EXEC_")}
    if server is not None:
        info = server.connection_info
        env["JUPYTER_EXEC_URL"] = info.base_url
        env["JUPYTER_EXEC_TOKEN"] = info.token or ""
    return subprocess.run(
        [str(JUPYTER_EXEC), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=110,
        check=False,
    )


def test_split_cells_on_percent_lines() -> None:
    cells = split_cells(SCRIPT)
    assert [cell.line for cell in cells] == [1, 5, 11]
    assert cells[0] == Cell("# A script in the percent format.\ntotal = sum(range(10))", 1)
    assert cells[1].code == 'print("total is", total)'
    assert cells[2].code.startswith("import matplotlib")
    assert split_cells("# %%\n\n# %%\n# only a comment\n") == []


def test_run_prints_each_cell_and_saves_images(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    info = server.connection_info
    done = jupyter_exec(
        "run",
        str(script),
        "--url",
        info.base_url,
        "--token",
        info.token or "",
        "--output-dir",
        str(output_dir),
    )
    assert done.returncode == 0, done.stderr
    assert "total is 45" in done.stdout
    (image,) = output_dir.iterdir()
    assert image.suffix == ".png"
    assert f"Image data saved to {image.resolve()}" in done.stdout
    assert "cell 3/3 (line 11)" in done.stderr
    assert "\r" not in done.stderr  # no ticker when stderr is not a terminal


def test_run_stops_at_the_failing_cell_with_status_1(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    script = tmp_path / "failing.py"
    script.write_text("print('one')\n# %%\nraise ValueError('two')\n# %%\nprint('three')\n")
    done = jupyter_exec("run", str(script), server=server, cwd=tmp_path)
    assert done.returncode == 1
    assert "one" in done.stdout
    assert "ValueError: two" in done.stdout
    assert "three" not in done.stdout
    assert "cell 2/3 (line 3) failed" in done.stderr


def test_run_c_runs_one_cell(server: LocalJupyterServer, tmp_path: Path) -> None:
    done = jupyter_exec("run", "-c", "print(6 * 7)", server=server, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n"
    timed_out = jupyter_exec(
        "run", "-c", "import time; time.sleep(60)", "--timeout", "1", server=server, cwd=tmp_path
    )
    assert timed_out.returncode == 1
    assert "Timeout: execution exceeded the timeout of 1 s" in timed_out.stdout
    quiet = jupyter_exec("run", "-c", "!pip install --no-index pip", server=server, cwd=tmp_path)
    assert (quiet.returncode, quiet.stdout) == (0, ""), quiet.stderr


def test_run_reads_the_script_from_stdin(server: LocalJupyterServer, tmp_path: Path) -> None:
    info = server.connection_info
    done = subprocess.run(
        [str(JUPYTER_EXEC), "run", "-", "--url", info.base_url, "--token", info.token or ""],
        input="x = 2\n# %%\nprint(x ** 10)\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1024\n"


def test_sessions_lists_the_sessions_of_a_server(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    with JupyterCodeExecutor(server, output_dir=tmp_path) as executor:
        session_id = executor.session_id
        assert session_id is not None
        listing = jupyter_exec("sessions", server=server)
        as_json = jupyter_exec("sessions", "--json", server=server)
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.startswith("id ")
        assert session_id in listing.stdout
        assert session_id in as_json.stdout
    assert session_id not in jupyter_exec("sessions", server=server).stdout


def test_command_line_errors(server: LocalJupyterServer, tmp_path: Path) -> None:
    no_url = jupyter_exec("sessions")
    assert no_url.returncode == 2
    assert "--url" in no_url.stderr
    info = server.connection_info
    wrong_token = jupyter_exec("run", "-c", "1", "--url", info.base_url, "--token", "wrong")
    assert wrong_token.returncode == 2
    assert "jupyter-exec: error: The Jupyter server refused" in wrong_token.stderr
    missing_dir = jupyter_exec("run", "-c", "1", "--output-dir", str(tmp_path / "nope"))
    assert missing_dir.returncode == 2
    assert "is not a directory" in missing_dir.stderr
    no_kernel = jupyter_exec("run", "-c", "1", "--kernel", "cobol", server=server)
    assert no_kernel.returncode == 2
    assert "Kernel 'cobol' is not installed." in no_kernel.stderr


@pytest.mark.slow
def test_ticker_shows_elapsed_time_on_a_terminal(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    info = server.connection_info
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [
                str(JUPYTER_EXEC),
                "run",
                "-c",
                "import time; time.sleep(3); print('slept')",
                "--url",
                info.base_url,
                "--token",
                info.token or "",
            ],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            cwd=tmp_path,
            timeout=110,
            check=False,
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(controller)
    assert done.returncode == 0
    assert done.stdout == "slept\n"
    assert re.search(rb"running cell 1/1 \(line 1\): \d+ s", shown), shown
    assert shown.endswith(b"\r\x1b[K")  # the line is cleared afterwards


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_run_starts_an_embedded_server_without_url(tmp_path: Path) -> None:
    script = tmp_path / "here.py"
    script.write_text("import os\nprint(os.getcwd())\n# %%\nopen('made-here.txt', 'w').close()\n")
    done = jupyter_exec("run", str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path}\n"
    assert (tmp_path / "made-here.txt").exists()
    # The server's own files lived in a temporary folder, not in the user's.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.py", "made-here.txt"]


def test_the_readme_quickstart_example_runs(server: LocalJupyterServer, tmp_path: Path) -> None:
    # The README's main job: this script must keep working, with its plot saved.
    example = Path(__file__).parents[1] / "examples" / "quickstart.py"
    done = jupyter_exec("run", str(example), "--output-dir", str(tmp_path), server=server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "25 primes below 100" in done.stdout
    (image,) = tmp_path.iterdir()
    assert f"Image data saved to {image.resolve()}" in done.stdout


def test_run_shows_a_cells_first_line_while_the_cell_still_runs(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    info = server.connection_info
    env = {**os.environ, "JUPYTER_EXEC_URL": info.base_url, "JUPYTER_EXEC_TOKEN": info.token or ""}
    code = "import time\nprint('first', flush=True)\ntime.sleep(60)\nprint('never')"
    process = subprocess.Popen(
        [str(JUPYTER_EXEC), "run", "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "first\n"
        assert process.poll() is None  # the cell still runs: the line came as it was printed
    finally:
        process.terminate()  # unwinds like Ctrl-C: the streamed call is dropped
        process.communicate(timeout=60)
    assert process.returncode == 130
    # Dropping the stream interrupted the cell: the server's session is gone or idle.
    with JupyterCodeExecutor(server, output_dir=tmp_path) as executor:
        assert executor.run("print('free')").output == "free"


def test_background_then_attach(server: LocalJupyterServer, tmp_path: Path) -> None:
    script = tmp_path / "long.py"
    script.write_text(
        "import time\nfor i in range(3):\n    print('step', i, flush=True)\n    time.sleep(0.2)\n"
        "# %%\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\n"
    )
    started = jupyter_exec("run", str(script), "--background", server=server, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    session_id, execution_id = started.stdout.split()
    assert f"jupyter-exec attach {session_id} {execution_id}" in started.stderr
    followed = jupyter_exec("attach", session_id, execution_id, server=server, cwd=tmp_path)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.startswith("step 0\nstep 1\nstep 2\n")
    [image] = tmp_path.glob("*.png")
    assert f"Image data saved to {image.resolve()}" in followed.stdout
    # A failing run attaches with status 1; an unknown id is an error, status 2.
    failing = jupyter_exec("run", "-c", "1 / 0", "--background", server=server, cwd=tmp_path)
    failed = jupyter_exec("attach", *failing.stdout.split(), server=server, cwd=tmp_path)
    assert failed.returncode == 1
    assert "ZeroDivisionError" in failed.stdout
    unknown = jupyter_exec("attach", session_id, "no-such-id", server=server, cwd=tmp_path)
    assert unknown.returncode == 2
    assert "no-such-id" in unknown.stderr
    no_url = jupyter_exec("run", "-c", "1", "--background", cwd=tmp_path)
    assert no_url.returncode == 2
    assert "--background needs a running server" in no_url.stderr


def test_run_uploads_downloads_and_sets_env(server: LocalJupyterServer, tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("1\n2\n3\n")
    code = (
        "import os\nrows = open('in/data.csv').read().split()\n"
        "open('report.txt', 'w').write(f\"{len(rows)} rows for {os.environ['WHO']}\")"
    )
    done = jupyter_exec(
        "run", "-c", code, "--upload", "data.csv:in/data.csv", "--download",
        "report.txt:got.txt", "--env", "WHO=the cli", server=server, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "got.txt").read_text() == "3 rows for the cli"
    # Without a server: a local one for the run, the same way.
    (tmp_path / "o").mkdir()
    done = jupyter_exec(
        "run", "-c", "_ = open('out.txt', 'w').write(open('data.csv').read())",
        "--upload", "data.csv", "--download", "out.txt", "--output-dir", str(tmp_path / "o"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "out.txt").read_text() == "1\n2\n3\n"


def test_bad_run_options_are_usage_errors(tmp_path: Path) -> None:
    for option in (["--env", "NOEQUALS"], ["--upload", "missing.csv"], ["--upload", ":x"]):
        done = jupyter_exec("run", "-c", "1", *option, cwd=tmp_path)
        assert done.returncode == 2, (option, done.stderr)
        assert option[1] in done.stderr or "name a file" in done.stderr


def test_files_commands(server: LocalJupyterServer, tmp_path: Path) -> None:
    (tmp_path / "up.txt").write_text("uploaded")
    with JupyterCodeExecutor(server, output_dir=tmp_path) as executor:
        sid = executor.session_id
        assert sid is not None
        put = jupyter_exec("files", "--session", sid, "put", "up.txt", "a/up.txt",
                           server=server, cwd=tmp_path)
        assert put.returncode == 0, put.stderr
        listed = jupyter_exec("files", "--session", sid, "ls", "a", server=server, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert "a/up.txt" in listed.stdout
        got = jupyter_exec("files", "--session", sid, "get", "a/up.txt", "back.txt",
                           server=server, cwd=tmp_path)
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "back.txt").read_text() == "uploaded"
        removed = jupyter_exec("files", "--session", sid, "rm", "a", server=server, cwd=tmp_path)
        assert removed.returncode == 0, removed.stderr
        assert "a" not in {e["name"] for e in executor.list_files()}
        missing = jupyter_exec("files", "--session", sid, "get", "a/up.txt",
                               server=server, cwd=tmp_path)
        assert missing.returncode == 2
        assert "a/up.txt" in missing.stderr
        unknown = jupyter_exec("files", "--session", "nobody", "ls", server=server, cwd=tmp_path)
        assert unknown.returncode == 2
        assert "nobody" in unknown.stderr
