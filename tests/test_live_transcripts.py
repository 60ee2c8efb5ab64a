"""A person watches an agent work live: JupyterLab with jupyter-collaboration, headless Chromium.

The transcript is open in a browser tab while the agent calls: each call's cell shows when
it starts, its output while it runs, and what the person types stays where they typed it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import nbformat
import pytest

from .conftest import Api
from .test_jupyterlab import (  # noqa: F401 (the fixture is used by name)
    CHROMIUM,
    CHROMIUM_ARGS,
    _call,
    _require_browser,
    jupyter_lab,
)

pytestmark = pytest.mark.timeout(300)


def _require_collaboration() -> None:
    try:
        import jupyter_server_ydoc  # noqa: F401, PLC0415
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must run the live transcript test: the [lab] extra is missing")
        pytest.skip("needs jupyter-collaboration (pip install 'jupyter-exec-ext[lab]')")


class _Call(threading.Thread):
    """One agent call made in the background, as an agent makes it while a person watches."""

    def __init__(
        self, url: str, token: str, session_id: str, code: str, *, stream: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.url = f"{url}/api/agent-sessions/{session_id}/execute"
        self.token = token
        self.body = {"code": code, "stream": stream}
        self.result: Any = None
        self.start()

    def run(self) -> None:
        if not self.body["stream"]:
            self.result = _call(self.url, self.token, "POST", self.body)
            return
        # A streamed call: its events come as lines, the result in the last ("done").
        request = urllib.request.Request(
            self.url,
            data=json.dumps(self.body).encode(),
            method="POST",
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            lines = [json.loads(line) for line in response if line.strip()]
        self.result = lines[-1]["result"]


def test_a_person_watches_calls_run_live(
    jupyter_lab: tuple[str, str, Path], tmp_path: Path
) -> None:
    sync_playwright, expect = _require_browser()
    _require_collaboration()
    url, token, root = jupyter_lab
    session = _call(f"{url}/api/agent-sessions", token, "POST", {"name": "analyst"})
    execute = f"{url}/api/agent-sessions/{session['id']}/execute"
    _call(execute, token, "POST", {"code": "answer = 42\nprint('the answer is', answer)"})

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/lab/tree/{session['transcript_path']}?token={token}")
        page.get_by_text("the answer is 42").wait_for(timeout=60_000)
        cells = page.locator(".jp-Notebook .jp-CodeCell")
        time.sleep(1.5)  # the room reloads a file written just before it opened

        # A plot renders as it is shown.
        plot = _Call(
            url,
            token,
            session["id"],
            (
                "import matplotlib.pyplot as plt\nplt.figure(figsize=(5, 2.5))\n"
                "plt.plot([1, 4, 2, 3])\nplt.title('agent plot')\nplt.show()"
            ),
        )
        image = page.locator(".jp-OutputArea-output img").first
        image.wait_for(timeout=30_000)
        assert image.evaluate("img => img.naturalWidth") > 100
        plot.join(30)

        # A call that prints, sleeps and prints again: its cell and first line show at once.
        running = _Call(
            url,
            token,
            session["id"],
            ("import time\nprint('first line', flush=True)\ntime.sleep(4)\nprint('second line')"),
        )
        outputs = page.locator(".jp-OutputArea-output")
        outputs.filter(has_text="first line").wait_for(timeout=3_000)
        running_cell = cells.filter(has_text="first line")
        expect(running_cell.locator(".jp-InputPrompt")).to_contain_text("[*]")
        assert running.is_alive()
        assert outputs.filter(has_text="second line").count() == 0
        screenshot = tmp_path / "jupyterlab-transcript.png"
        news = page.locator(".jp-toast-button").filter(has_text="No")
        if news.count():
            news.first.click()  # JupyterLab's question about its news feed hides the view
            expect(news).to_have_count(0)
        page.screenshot(path=str(screenshot))
        running.join(30)
        assert running.result["status"] == "ok"
        outputs.filter(has_text="second line").wait_for(timeout=10_000)
        expect(running_cell.locator(".jp-InputPrompt")).to_contain_text("[3]")

        # The person adds a cell of their own at the end and types in it, unsaved; the
        # agent's next call comes after it.
        _type_a_cell_below(page, running_cell, "person_note = 'typed by a person'")
        # (A streamed call: the live transcript and the stream both follow its output.)
        after = _Call(url, token, session["id"], "print('after the person')", stream=True)
        outputs.filter(has_text="after the person").wait_for(timeout=10_000)
        after.join(30)
        assert after.result["output"] == "after the person\n"
        sources = cells.evaluate_all(
            "nodes => nodes.map(n => n.querySelector('.jp-InputArea-editor').textContent)"
        )
        # (CodeMirror's lines come joined, without line ends.)
        assert [source[:11] for source in sources][-3:] == [
            "import time",
            "person_note",
            "print('afte",
        ]
        # The tab took every change as the room's: no "File changed" dialog, nothing unsaved
        # from the agent's side.
        assert page.locator(".jp-Dialog").count() == 0
        browser.close()

    # Deleting the session leaves the file on disk valid and complete.
    _call(f"{url}/api/agent-sessions/{session['id']}", token, "DELETE")
    _check_complete(root / session["transcript_path"])
    assert screenshot.stat().st_size > 10_000
    if target := os.environ.get("JUPYTER_EXEC_SCREENSHOT_DIR"):
        shutil.copy(screenshot, Path(target) / screenshot.name)


def _check_complete(path: Path) -> None:
    """The transcript on disk has every call, complete, and the person's cell in place."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source]
    assert [cell.source.split("\n")[0] for cell in code_cells] == [
        "answer = 42",
        "import matplotlib.pyplot as plt",
        "import time",
        "person_note = 'typed by a person'",
        "print('after the person')",
    ]
    assert any("image/png" in output.get("data", {}) for output in code_cells[1].outputs)
    slept = code_cells[2]
    assert slept.execution_count == 3
    assert "".join(output.get("text", "") for output in slept.outputs) == (
        "first line\nsecond line\n"
    )
    assert slept.metadata["agent_session"] == {"status": "ok"}
    assert code_cells[4].outputs[0]["text"] == "after the person\n"


def _type_a_cell_below(page: Any, cell: Any, text: str) -> None:
    """Insert a cell below ``cell`` with the keyboard, as a person does, and type ``text``."""
    cell.click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.type(text)
    page.keyboard.press("Escape")


@pytest.fixture
def jupyter_lab_slow_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> tuple[str, str, Path]:
    """`jupyter lab` whose rooms save 30 s after a change (the default is 1 s)."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"YDocExtension": {"document_save_delay": 30}})
    )
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config))
    server: tuple[str, str, Path] = request.getfixturevalue("jupyter_lab")
    return server


def test_a_room_without_tabs_saves_the_agents_cells_at_once(
    jupyter_lab_slow_saves: tuple[str, str, Path],
) -> None:
    sync_playwright, _expect = _require_browser()
    _require_collaboration()
    url, token, root = jupyter_lab_slow_saves
    session = _call(f"{url}/api/agent-sessions", token, "POST", {"name": "unwatched"})
    transcript = root / session["transcript_path"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{url}/lab/tree/{session['transcript_path']}?token={token}")
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        time.sleep(2)  # the room is open and has loaded the file
        _call(
            f"{url}/api/agent-sessions/{session['id']}/execute",
            token,
            "POST",
            {"code": "print('seen in the tab')"},
        )
        page.locator(".jp-OutputArea-output").filter(has_text="seen in the tab").wait_for(
            timeout=10_000
        )
        browser.close()
    time.sleep(1)  # the room notices its client is gone; it stays open for its cleanup delay

    # The room is still open, without a tab: the next call goes through it, and the room is
    # made to save at once rather than 30 s later (or never, if it is cleaned up first).
    _call(
        f"{url}/api/agent-sessions/{session['id']}/execute",
        token,
        "POST",
        {"code": "print('written with no tab open')"},
    )
    deadline = time.monotonic() + 10
    texts: list[str] = []
    while time.monotonic() < deadline:
        cells = nbformat.read(transcript, as_version=4).cells
        texts = [o.get("text", "") for cell in cells for o in cell.get("outputs", [])]
        if "written with no tab open\n" in texts:
            break
        time.sleep(0.2)
    assert texts[-2:] == ["seen in the tab\n", "written with no tab open\n"]


# -- the writer's choice, in a server with jupyter-collaboration loaded (no browser) ---------


@pytest.fixture(params=[False, True], ids=["rtc", "disable_rtc"])
def disable_rtc(request: pytest.FixtureRequest) -> bool:
    """jupyter-collaboration's own switch."""
    value: bool = request.param
    return value


@pytest.fixture
def jp_server_config(disable_rtc: bool) -> dict[str, Any]:
    """The extension beside jupyter-collaboration (and the file ids it needs)."""
    return {
        "ServerApp": {
            "jpserver_extensions": {
                "jupyter_exec_ext": True,
                "jupyter_server_fileid": True,
                "jupyter_server_ydoc": True,
            }
        },
        "AgentSessionManager": {"default_timeout": 20, "kernel_pool": {}},
        "YDocExtension": {"disable_rtc": disable_rtc},
    }


async def test_without_a_room_the_file_is_written_and_disable_rtc_is_respected(
    api: Api, manager: Any, disable_rtc: bool, jp_root_dir: Path
) -> None:
    _require_collaboration()
    assert manager.live_notebooks.available is not disable_rtc
    session = await api.create()
    await api.execute(session["id"], "print('to the file')")
    transcript = manager._sessions[session["id"]].transcript
    # No tab opened the notebook: no room exists, and none is made for it.
    assert await manager.live_notebooks.document(session["transcript_path"]) is None
    await transcript.flush()
    notebook = nbformat.read(jp_root_dir / session["transcript_path"], as_version=4)
    assert [cell.outputs[0]["text"] for cell in notebook.cells] == ["to the file\n"]
    apps = manager.live_notebooks.serverapp.extension_manager.extension_apps
    [collaboration] = apps["jupyter_server_ydoc"]
    assert not collaboration.ywebsocket_server.rooms
