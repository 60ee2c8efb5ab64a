"""A person watches an agent session in JupyterLab: real `jupyter lab`, headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest

from .conftest import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.timeout(300)


def _require_browser() -> tuple[Any, Any]:
    """Playwright's sync API, or a skip; CI installs both, so there it is a failure."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        sync_playwright = expect = None
    if sync_playwright is None or not os.path.exists(CHROMIUM):
        reason = "needs playwright and Debian's chromium (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    return sync_playwright, expect


def _call(url: str, token: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


@pytest.fixture
def jupyter_lab(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """`jupyter lab` as a person starts it, with the extension enabled by its install."""
    root = tmp_path / "root"
    root.mkdir()
    port, token = free_port(), "lab-token"
    log = (tmp_path / "lab.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
            f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        # jupyter-collaboration keeps its rooms' updates in .jupyter_ystore.db in the folder
        # the server starts in: not the checkout's.
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _call(f"{url}/api/status", token)
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "lab.log").read_text()
                assert time.monotonic() < deadline, "jupyter lab did not start"
                time.sleep(0.2)
        yield url, token, root
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # jupyter_server (2.21) can hang at interpreter exit on an idle AnyIO worker thread
            # of its contents manager, after its own cleanup is done; what matters here is that
            # the kernels are gone, which the test asserts. Then the server is ended.
            process.kill()
            process.wait(timeout=30)
        log.close()


def _kernel_processes(kernel_id: str) -> list[psutil.Process]:
    """The processes of a kernel, found by its connection file name."""
    found = []
    for candidate in psutil.process_iter(["cmdline"]):
        if any(f"kernel-{kernel_id}.json" in part for part in candidate.info["cmdline"] or []):
            found.append(candidate)
    return found


def test_a_person_sees_the_session_live_in_jupyterlab(
    jupyter_lab: tuple[str, str, Path], tmp_path: Path
) -> None:
    sync_playwright, expect = _require_browser()
    url, token, root = jupyter_lab
    session = _call(f"{url}/api/agent-sessions", token, "POST", {"name": "analyst"})
    execute = f"{url}/api/agent-sessions/{session['id']}/execute"
    _call(execute, token, "POST", {"code": "answer = 42\nprint('the answer is', answer)"})
    _call(
        execute,
        token,
        "POST",
        {"code": "import matplotlib.pyplot as plt\nplt.plot([1, 4, 2, 3])\nplt.title('agent plot')\nplt.show()"},
    )
    transcript = root / session["transcript_path"]
    for _ in range(100):
        if len(nbformat.read(transcript, as_version=4).cells) == 2:
            break
        time.sleep(0.1)

    kernels_before = {kernel["id"] for kernel in _call(f"{url}/api/kernels", token)}
    screenshot = tmp_path / "jupyterlab-running-panel.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/lab/tree/{session['transcript_path']}?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)

        # The Running panel lists the session under its kernel, by name, as its transcript.
        running_tab = page.locator('li[data-id="jp-running-sessions"]')
        if running_tab.get_attribute("aria-selected") != "true":
            running_tab.click()
        entry = page.locator("#jp-running-sessions .jp-RunningSessions-itemLabel").filter(
            has_text="analyst"
        )
        entry.first.wait_for(timeout=30_000)
        titles = " ".join(entry.evaluate_all("nodes => nodes.map(n => n.title)"))
        assert session["transcript_path"] in titles

        # The opened transcript shows both calls: the printed text and a rendered image.
        expect(page.locator(".jp-Notebook .jp-CodeCell")).to_have_count(2, timeout=30_000)
        page.get_by_text("the answer is 42").wait_for(timeout=30_000)
        image = page.locator(".jp-OutputArea-output img").first
        image.wait_for(timeout=30_000)
        assert image.evaluate("img => img.naturalWidth") > 100

        # The notebook is connected to the agent's live kernel, not a new one.
        page.locator(".jp-Notebook-ExecutionIndicator, .jp-KernelStatus").first.wait_for(
            timeout=30_000
        )
        page.screenshot(path=str(screenshot))
        browser.close()

    # Opening the transcript started no kernel: JupyterLab joined the agent's own.
    assert {kernel["id"] for kernel in _call(f"{url}/api/kernels", token)} == kernels_before
    [server_session] = _call(f"{url}/api/sessions", token)
    assert server_session["path"] == session["transcript_path"]
    assert server_session["kernel"]["id"] == session["kernel_id"]
    assert screenshot.stat().st_size > 10_000
    assert _kernel_processes(session["kernel_id"])
    if target := os.environ.get("JUPYTER_EXEC_SCREENSHOT_DIR"):
        shutil.copy(screenshot, Path(target) / screenshot.name)


def test_stopping_jupyter_lab_leaves_no_kernel(jupyter_lab: tuple[str, str, Path]) -> None:
    url, token, _root = jupyter_lab
    session = _call(f"{url}/api/agent-sessions", token, "POST", {})
    assert _kernel_processes(session["kernel_id"])
    _call(f"{url}/api/shutdown", token, "POST", {})
    deadline = time.monotonic() + 30
    while _kernel_processes(session["kernel_id"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _kernel_processes(session["kernel_id"])
