"""Execution semantics against real kernels: state, order, output, images, timeouts, deaths."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from jupyter_exec_ext.spec import validation_error

from .conftest import Api, PeakRss

pytestmark = pytest.mark.timeout(180)


async def run(api: Api, session_id: str, code: str, **fields: Any) -> dict[str, Any]:
    """Execute and check the result against the spec."""
    result = await api.execute(session_id, code, **fields)
    assert validation_error("ExecutionResult", result) is None, validation_error(
        "ExecutionResult", result
    )
    return result


async def test_state_persists_and_sessions_are_isolated(api: Api) -> None:
    first, second = await api.create(), await api.create()
    assert (await run(api, first["id"], "shared = 'first'"))["status"] == "ok"
    assert (await run(api, first["id"], "print(shared)"))["output"] == "first\n"
    other = await run(api, second["id"], "shared")
    assert other["status"] == "error"
    assert other["error"]["ename"] == "NameError"


async def test_calls_to_one_session_run_in_arrival_order(api: Api) -> None:
    session = await api.create()
    await run(api, session["id"], "seen = []")
    calls = [
        run(api, session["id"], f"import time; time.sleep(0.05 * ({index} % 3)); seen.append({index})")
        for index in range(8)
    ]
    # Start them one after another so their arrival order is known.
    tasks = []
    for call in calls:
        tasks.append(asyncio.ensure_future(call))
        await asyncio.sleep(0.01)
    results = await asyncio.gather(*tasks)
    assert all(result["status"] == "ok" for result in results)
    counts = [result["execution_count"] for result in results]
    assert counts == sorted(counts)
    assert (await run(api, session["id"], "print(seen)"))["output"] == f"{list(range(8))}\n"


async def test_different_sessions_run_at_the_same_time(api: Api) -> None:
    sessions = [await api.create() for _ in range(3)]
    started = time.monotonic()
    results = await asyncio.gather(
        *(run(api, s["id"], "import time; time.sleep(1.5)") for s in sessions)
    )
    elapsed = time.monotonic() - started
    assert all(result["status"] == "ok" for result in results)
    # Run one after another they would need 4.5 s at least.
    assert elapsed < 4.0


async def test_text_is_joined_exactly_as_printed(api: Api) -> None:
    session = await api.create()
    code = (
        "import sys\n"
        "print('a', end='')\n"
        "sys.stdout.flush()\n"
        "print('b', end='', file=sys.stderr)\n"
        "sys.stderr.flush()\n"
        "print('c', end='')\n"
        "sys.stdout.flush()\n"
        "40 + 2"
    )
    result = await run(api, session["id"], code)
    assert result["output"] == "abc\n42\n"
    kinds = [(item["type"], item.get("name")) for item in result["outputs"]]
    assert kinds == [
        ("stream", "stdout"),
        ("stream", "stderr"),
        ("stream", "stdout"),
        ("result", None),
    ]
    assert result["outputs"][-1]["execution_count"] == result["execution_count"]


async def test_error_keeps_what_was_printed_before(api: Api) -> None:
    session = await api.create()
    result = await run(
        api, session["id"], "print('step 1')\nprint('step 2')\nraise ValueError('bad value')"
    )
    assert result["status"] == "error"
    assert result["output"].startswith("step 1\nstep 2\n")
    assert "ValueError: bad value" in result["output"]
    assert "\x1b[" not in result["output"]
    assert result["error"]["ename"] == "ValueError"
    assert result["error"]["evalue"] == "bad value"
    assert all("\x1b[" not in line for line in result["error"]["traceback"])
    assert [item["type"] for item in result["outputs"]] == ["stream", "error"]


async def test_ansi_codes_are_removed_from_printed_text(api: Api) -> None:
    session = await api.create()
    result = await run(api, session["id"], r"print('\x1b[31mred\x1b[0m plain')")
    assert result["output"] == "red plain\n"


@pytest.mark.parametrize(
    ("code", "mime_type"),
    [
        ("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()", "image/png"),
        ("import matplotlib.pyplot as plt\nfig = plt.figure()\nplt.plot([1, 2])\nfig", "image/png"),
        ("import matplotlib.pyplot as plt\nplt.plot([3, 1])\nplt.gcf()", "image/png"),
        ("import matplotlib.pyplot as plt\nplt.plot([1, 2])", "image/png"),
        ("from PIL import Image\nImage.new('RGB', (100, 100), 'red')", "image/png"),
        (
            "from IPython.display import Image\nimport io\nfrom PIL import Image as P\n"
            "b = io.BytesIO(); P.new('RGB', (100, 100), 'blue').save(b, 'JPEG')\n"
            "Image(data=b.getvalue(), format='jpeg')",
            "image/jpeg",
        ),
        (
            "from IPython.display import SVG\n"
            "SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\">"
            "<rect width=\"10\" height=\"10\"/></svg>')",
            "image/svg+xml",
        ),
        ("from IPython.display import HTML, display\ndisplay(HTML('<i>hi</i>'))", "text/html"),
    ],
    ids=["show", "figure-last", "gcf-last", "plot-last", "pil", "jpeg", "svg", "html"],
)
async def test_rich_output_becomes_exactly_one_file(api: Api, code: str, mime_type: str) -> None:
    session = await api.create()
    result = await run(api, session["id"], code)
    assert result["status"] == "ok", result["output"]
    assert [f["mime_type"] for f in result["files"]] == [mime_type]
    [stored] = result["files"]
    assert f"[{mime_type}: {stored['id']}]" in result["output"]
    # No base64 in the text: a 100x100 image would be over a thousand characters.
    assert len(result["output"]) < 300
    assert stored["size"] > 0


async def test_png_file_holds_the_image(api: Api, manager: Any) -> None:
    session = await api.create()
    result = await run(
        api,
        session["id"],
        "import matplotlib.pyplot as plt\nplt.figure(figsize=(6.4, 4.8), dpi=100)\n"
        "plt.plot([1, 2])\nplt.show()",
    )
    [stored] = result["files"]
    path = manager.get_file(session["id"], stored["id"]).path
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    # PNG width and height live at bytes 16-24 of the IHDR chunk; the inline backend crops
    # the 640x480 figure to its tight bounding box.
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 400 < width <= 640
    assert 300 < height <= 480
    assert len(data) == stored["size"]


async def test_display_and_print_keep_their_order(api: Api) -> None:
    session = await api.create()
    result = await run(
        api,
        session["id"],
        "from IPython.display import display, HTML\n"
        "print('before')\ndisplay(HTML('<p>x</p>'))\nprint('after')",
    )
    [stored] = result["files"]
    lines = result["output"].splitlines()
    assert lines[0] == "before"
    assert lines[-1] == "after"
    assert f"[text/html: {stored['id']}]" in lines
    assert [item["type"] for item in result["outputs"]] == ["stream", "display", "stream"]


async def test_timeout_interrupts_and_keeps_state(api: Api) -> None:
    session = await api.create()
    await run(api, session["id"], "before = 'kept'")
    started = time.monotonic()
    result = await run(
        api,
        session["id"],
        "import time\nprint('working', flush=True)\nduring = 1\ntime.sleep(30)\nafter = 1",
        timeout=1.5,
    )
    elapsed = time.monotonic() - started
    assert result["status"] == "timeout"
    assert elapsed < 10
    assert result["output"].startswith("working\n")
    assert "timeout of 1.5 s" in result["output"]
    assert result["error"]["ename"] == "TimeoutError"
    # The next call starts at once and sees the state from before the interrupt.
    started = time.monotonic()
    follow_up = await run(api, session["id"], "print(before, during, 'after' in dir())")
    assert time.monotonic() - started < 5
    assert follow_up["output"] == "kept 1 False\n"


@pytest.mark.slow
async def test_timeout_of_code_that_ignores_interrupts_restarts_the_kernel(api: Api) -> None:
    session = await api.create()
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('stubborn', flush=True)\n"
        "time.sleep(60)"
    )
    result = await run(api, session["id"], code, timeout=1)
    assert result["status"] == "timeout"
    assert result["output"].startswith("stubborn\n")
    assert "restarted" in result["output"]
    follow_up = await run(api, session["id"], "print('alive')")
    assert follow_up["output"] == "alive\n"


@pytest.mark.parametrize(
    "code",
    [
        # The pause lets the kernel's IOPub thread send 'bye' before the process goes:
        # output the kernel never sent cannot be kept.
        "import os, time\nprint('bye', flush=True)\ntime.sleep(0.3)\nos._exit(1)",
        "import os, signal, time\nprint('bye', flush=True)\ntime.sleep(0.3)\n"
        "os.kill(os.getpid(), signal.SIGKILL)",
        "import ctypes, time\nprint('bye', flush=True)\ntime.sleep(0.3)\nctypes.string_at(0)",
    ],
    ids=["exit", "sigkill", "segfault"],
)
async def test_kernel_death_is_reported_and_the_session_recovers(api: Api, code: str) -> None:
    session = await api.create()
    await run(api, session["id"], "lost = 1")
    started = time.monotonic()
    result = await run(api, session["id"], code)
    assert time.monotonic() - started < 15
    assert result["status"] == "dead"
    assert result["output"].startswith("bye\n")
    assert "state" in result["output"]
    assert result["error"]["ename"] == "KernelDied"
    follow_up = await run(api, session["id"], "print('lost' in dir())")
    assert follow_up["status"] == "ok"
    assert follow_up["output"] == "False\n"
    model = (await api.request("GET", session["id"])).json
    assert model["status"] == "idle"


async def test_kernel_killed_between_calls_is_replaced(api: Api, jp_serverapp: Any) -> None:
    session = await api.create()
    kernel = jp_serverapp.kernel_manager.get_kernel(session["kernel_id"])
    os.kill(kernel.provisioner.pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    result = await run(api, session["id"], "print('fresh')")
    assert result["status"] == "ok"
    assert "earlier state" in result["output"]
    assert result["output"].endswith("fresh\n")


async def test_input_fails_at_once(api: Api) -> None:
    session = await api.create()
    started = time.monotonic()
    result = await run(api, session["id"], "name = input('Your name? ')", timeout=10)
    assert time.monotonic() - started < 5
    assert result["status"] == "error"
    assert "input" in result["error"]["evalue"]
    assert "not available" in result["error"]["evalue"]


async def test_working_folder_is_the_sessions_own(api: Api, jp_root_dir: Any) -> None:
    session = await api.create(name="worker")
    result = await run(
        api, session["id"], "import os\nopen('notes.txt', 'w').write('hi')\nprint(os.getcwd())"
    )
    expected = jp_root_dir / "agent-sessions" / "worker"
    assert result["output"].strip() == str(expected)
    assert (expected / "notes.txt").read_text() == "hi"


async def test_pip_progress_bars_are_off(api: Api) -> None:
    session = await api.create()
    result = await run(api, session["id"], "import os; print(os.environ.get('PIP_PROGRESS_BAR'))")
    assert result["output"] == "off\n"


@pytest.mark.slow
async def test_huge_output_is_cut_and_saved_whole(api: Api, manager: Any) -> None:
    session = await api.create()
    code = (
        "import sys\n"
        "print('HEAD')\n"
        "for i in range(200):\n"
        "    sys.stdout.write(('%06d' % i) * 80000 + '\\n')\n"  # 200 x 480 kB: ~96 MB
        "print('TAIL')"
    )
    result = await run(api, session["id"], code, timeout=120)
    assert result["status"] == "ok"
    assert result["truncated"] is True
    assert len(result["output"]) < 100_000 + 500
    assert result["output"].startswith("HEAD\n")
    assert result["output"].endswith("TAIL\n")
    assert "characters cut" in result["output"]
    [full] = [f for f in result["files"] if f["mime_type"] == "text/plain"]
    assert full["size"] == len("HEAD\n") + 200 * (480_000 + 1) + len("TAIL\n")
    path = manager.get_file(session["id"], full["id"]).path
    with path.open() as handle:
        assert handle.read(5) == "HEAD\n"
    marker = next(item for item in result["outputs"] if item["type"] == "truncated")
    assert marker["file"] == full["id"]
    # Head and tail together keep exactly the configured 100,000 characters.
    assert marker["omitted_chars"] == full["size"] - 100_000


#: Server memory a call may take, whatever its output: the README's promise.
MEMORY_BOUND = 50 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize(
    "code",
    [
        "print('x' * 100_000_000)",
        "'x' * 100_000_000",
        "raise ValueError('x' * 100_000_000)",
        "import sys\nfor i in range(100):\n    sys.stdout.write('%07d' % i * 142_858)",
    ],
    ids=["print", "result", "error", "many-writes"],
)
async def test_server_memory_stays_bounded_while_100_mb_flow(
    api: Api, manager: Any, code: str
) -> None:
    # The server runs in this process (pytest-jupyter); the kernel is a process of its own,
    # so this process's peak RSS is the server's, plus the small answer the test reads.
    session = await api.create()
    await run(api, session["id"], "1")
    peak = PeakRss()
    result = await run(api, session["id"], code, timeout=120)
    growth = peak.growth()
    assert growth < MEMORY_BOUND, f"the server grew by {growth / 2**20:.0f} MiB"
    assert result["truncated"] is True
    assert len(result["output"]) < 100_000 + 500
    [full] = [f for f in result["files"] if f["mime_type"] == "text/plain"]
    assert full["size"] >= 100_000_000  # nothing was lost on the way
    path = manager.get_file(session["id"], full["id"]).path
    with path.open() as handle:
        handle.seek(full["size"] - 20)
        end = handle.read()
    assert end.rstrip("\n'").endswith(("x" * 10, "0000099" * 2))


@pytest.mark.parametrize(
    ("code", "kind", "letter"),
    [
        ("'x' * 2_000_000", "result", "x"),
        ("from IPython.display import display\ndisplay('y' * 2_000_000)", "display", "y"),
        ("raise ValueError('z' * 2_000_000)", "error", "z"),
    ],
)
async def test_every_text_of_a_result_is_cut(
    api: Api, manager: Any, code: str, kind: str, letter: str
) -> None:
    session = await api.create()
    reply = await api.request("POST", session["id"], "execute", body={"code": code})
    result = reply.json
    assert validation_error("ExecutionResult", result) is None
    # output and outputs keep 100,000 characters, an error's value and traceback as much.
    assert len(reply.body) < 700_000, len(reply.body)
    assert result["truncated"] is True
    items = [item for item in result["outputs"] if item["type"] == kind]
    assert items
    assert all(item["truncated"] for item in items)
    kept = sum(len(item.get("text") or "\n".join(item.get("traceback", []))) for item in items)
    assert kept <= 100_000
    if kind == "error":
        assert len(result["error"]["evalue"]) < 100_100
        assert "characters cut" in result["error"]["evalue"]
        assert len("\n".join(result["error"]["traceback"])) < 100_100
    [full] = [f for f in result["files"] if f["mime_type"] == "text/plain"]
    text = manager.get_file(session["id"], full["id"]).path.read_text()
    assert text.count(letter) >= 2_000_000  # the whole text is kept


async def test_output_limit_is_configurable(api: Api, manager: Any) -> None:
    manager.max_output_chars = 1000
    session = await api.create()
    result = await run(api, session["id"], "print('x' * 5000)")
    assert result["truncated"] is True
    # 500 characters of head, 500 of tail: the tail's last one is the newline.
    head, marker, tail = result["output"].split("\n", 2)
    assert head == "x" * 500
    assert marker.startswith("[... 4001 characters cut")
    assert tail == "x" * 499 + "\n"
