"""How fast and how costly the live JupyterLab view is (jupyter_exec_ext.live_transcript).

Starts `jupyter lab` with jupyter-collaboration, opens a session's transcript in headless
Chromium (Debian's, through Playwright) and measures:

- print -> visible: calls of ``print(repr(time.time()))`` then a short sleep; the time a
  MutationObserver in the tab sees the line, minus the printed time (one clock: same host);
- server CPU over N small calls (``x = 1``) with the transcript open live, against the same
  calls into a second session whose transcript is written to the file (no tab open).

    python benchmarks/live_transcript.py [--prints 30] [--calls 500]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "bench-token"

WATCH = """
window.__seen = [];
new MutationObserver(() => {
  for (const node of document.querySelectorAll('.jp-OutputArea-output pre')) {
    if (!node.__counted) {
      for (const line of node.textContent.split('\\n')) {
        if (line.startsWith('T=')) window.__seen.push([Date.now() / 1000, line.slice(2)]);
      }
      node.__counted = true;
    }
  }
}).observe(document.body, {childList: true, subtree: true, characterData: true});
"""


def _call(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"token {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prints", type=int, default=30)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="live-bench-"))
    port = 18000 + int(time.time()) % 1000
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}",
            "--AgentSessionManager.kernel_pool={}",
            "--LabApp.news_url=None",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                _call(f"{url}/api/status")
                break
            except OSError:
                time.sleep(0.2)
        server = psutil.Process(process.pid)
        live = _call(f"{url}/api/agent-sessions", "POST", {"name": "live"})
        filed = _call(f"{url}/api/agent-sessions", "POST", {"name": "file"})
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(f"{url}/lab/tree/{live['transcript_path']}?token={TOKEN}")
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            time.sleep(3)
            page.evaluate(WATCH)
            execute = f"{url}/api/agent-sessions/{live['id']}/execute"
            for _ in range(args.prints):
                _call(
                    execute,
                    "POST",
                    {
                        "code": "import time\nprint('T=' + repr(time.time()), "
                        "flush=True)\ntime.sleep(0.3)"
                    },
                )
            time.sleep(1)
            seen = page.evaluate("window.__seen")
            first_seen: dict[str, float] = {}
            for shown, printed in seen:  # a line shows again when the call's cell completes
                first_seen.setdefault(printed, shown)
            delays = sorted(
                (shown - float(printed)) * 1000 for printed, shown in first_seen.items()
            )

            def cpu_over(session_id: str) -> float:
                before = server.cpu_times()
                for _ in range(args.calls):
                    _call(
                        f"{url}/api/agent-sessions/{session_id}/execute", "POST", {"code": "x = 1"}
                    )
                time.sleep(3)  # let the transcript writes and the room's saves finish
                after = server.cpu_times()
                return (after.user + after.system) - (before.user + before.system)

            live_cpu = cpu_over(live["id"])
            file_cpu = cpu_over(filed["id"])
            browser.close()
        print(
            f"print -> visible in the open tab: {len(delays)}/{args.prints} seen, median "
            f"{statistics.median(delays):.0f} ms, p95 {delays[int(len(delays) * 0.95) - 1]:.0f} ms"
            if delays
            else "print -> visible: nothing seen"
        )
        print(
            f"server CPU over {args.calls} x=1 calls: live {live_cpu:.2f} s, file "
            f"{file_cpu:.2f} s ({live_cpu / file_cpu:.2f}x)"
        )
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
