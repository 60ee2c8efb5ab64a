"""File safety: file ids are unguessable and a download never leaves the session's own files.

A session's kernel runs as the server's user, so it can reach the store folder and replace
what lies there (symlinks, hard links, FIFOs). The API must still serve only the bytes the
server itself captured for that session, and nothing for a path-like or foreign file id.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

from .conftest import Api

pytestmark = pytest.mark.timeout(120)

#: The test knows where the store is, as a kernel could find out by looking around /tmp.
STORE = "store"
#: The start of a file no session may ever be served.
PASSWD = Path("/etc/passwd").read_bytes()[:64]


@pytest.fixture
def agent_config(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Keep captured files where the test (and the kernels) can find them."""
    return {"output_store_dir": str(tmp_path / STORE), **getattr(request, "param", {})}


async def show_html(api: Api, session_id: str, html: str) -> str:
    """Display ``html`` in the session and return the id of the captured file."""
    result = await api.execute(
        session_id, f"from IPython.display import HTML, display\ndisplay(HTML({html!r}))"
    )
    assert result["status"] == "ok", result["output"]
    [file] = result["files"]
    file_id: str = file["id"]
    return file_id


def find_in_store(store: Path, file_id: str) -> str:
    """Code that sets ``path`` to the stored file of ``file_id``, found as a kernel would."""
    return (
        "import glob, os, shutil\n"
        f"[path] = glob.glob(os.path.join({str(store)!r}, '*', {file_id!r} + '.*'))\n"
    )


async def test_file_ids_are_long_random_and_url_safe(api: Api) -> None:
    sessions = [await api.create(), await api.create()]
    ids: list[str] = []
    for session in sessions:
        result = await api.execute(
            session["id"],
            "from IPython.display import HTML, display\n"
            "for n in range(20):\n    display(HTML(f'<i>{n}</i>'))",
        )
        ids += [file["id"] for file in result["files"]]
    assert len(ids) == len(set(ids)) == 40
    for file_id in ids:
        # 22 characters of the 64 URL-safe ones hold at least 128 bits.
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", file_id), file_id
        assert not any(session["id"] in file_id for session in sessions)
    # Counters, timestamps and per-session prefixes make ids that agree in many places;
    # random ids agree in about one position in 64.
    for first, second in itertools.combinations(ids, 2):
        same = sum(a == b for a, b in zip(first, second, strict=True))
        assert same < len(first) // 3, (first, second)


async def test_a_file_id_only_works_on_its_own_session(api: Api) -> None:
    mine, other = await api.create(), await api.create()
    file_id = await show_html(api, mine["id"], "<b>mine</b>")
    assert (await api.request("GET", mine["id"], "files", file_id)).body == b"<b>mine</b>"
    reply = await api.request("GET", other["id"], "files", file_id)
    assert reply.status == 404
    assert b"mine" not in reply.body


def raw_get(port: int, path: str, token: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written: no client normalises ``..`` or re-encodes it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path, headers={"Authorization": f"token {token}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


async def test_paths_that_try_to_leave_the_store_are_404(
    api: Api, jp_serverapp: Any, jp_http_port: int, jp_base_url: str
) -> None:
    mine, other = await api.create(), await api.create()
    await show_html(api, mine["id"], "<b>mine</b>")
    theirs = await show_html(api, other["id"], "<b>their secret</b>")
    files = f"{jp_base_url}api/agent-sessions/{mine['id']}/files/"
    sessions = f"{jp_base_url}api/agent-sessions/"
    hostile = [
        f"{files}../../../../etc/passwd",
        f"{files}..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"{files}..%252F..%252F..%252F..%252Fetc%252Fpasswd",
        f"{files}%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        f"{files}..%5C..%5Cetc%5Cpasswd",
        f"{files}%2Fetc%2Fpasswd",
        f"{files}/etc/passwd",
        f"{files}..",
        f"{files}%2e%2e",
        f"{files}{theirs}%00",
        f"{files}..%2F{other['id']}%2F{theirs}.html",
        f"{files}x/../{theirs}",
        f"{sessions}../{other['id']}/files/{theirs}",
        f"{sessions}{mine['id']}/..%2F{other['id']}/files/{theirs}",
        f"{sessions}..%2F{other['id']}/files/{theirs}",
        f"{sessions}%2e%2e/files/x",
        f"{sessions}..%252F{other['id']}/files/{theirs}",
    ]
    token = jp_serverapp.identity_provider.token
    for path in hostile:
        # In a thread: the server answers on this test's event loop.
        status, body = await asyncio.to_thread(raw_get, jp_http_port, path, token)
        assert status == 404, (path, status, body[:200])
        assert b"their secret" not in body, path
        assert PASSWD not in body, path
    # The real file is still served on its own session, so the 404s above mean something.
    status, body = await asyncio.to_thread(
        raw_get, jp_http_port, f"{sessions}{other['id']}/files/{theirs}", token
    )
    assert (status, body) == (200, b"<b>their secret</b>")


#: What a kernel can put where one of its captured files was (``path``), given the path of
#: another session's file (``theirs``). Same-sized content makes a short or long read no help.
SWAPS = {
    "symlink to /etc/passwd": "os.remove(path); os.symlink('/etc/passwd', path)",
    "symlink to another session's file": "os.remove(path); os.symlink(theirs, path)",
    "hard link to another session's file": "os.remove(path); os.link(theirs, path)",
    "folder swapped for a symlink": (
        "folder = os.path.dirname(path); shutil.rmtree(folder)\n"
        "os.symlink(os.path.dirname(theirs), folder); os.link(theirs, path)"
    ),
    # Opening a FIFO for reading waits for a writer: it must not hang the server.
    "fifo": "os.remove(path); os.mkfifo(path)",
}


@pytest.mark.parametrize("swap", SWAPS.values(), ids=SWAPS.keys())
async def test_a_file_the_kernel_swaps_in_is_never_served(
    api: Api, tmp_path: Path, swap: str
) -> None:
    mine, other = await api.create(), await api.create()
    # The two files have the same size, so Content-Length does not give a swap away.
    file_id = await show_html(api, mine["id"], "<b>mine, my secret</b>")
    theirs = await show_html(api, other["id"], "<b>their secret</b>")
    store = tmp_path / STORE
    code = (
        find_in_store(store, file_id)
        + f"[theirs] = glob.glob(os.path.join({str(store)!r}, '*', {theirs!r} + '.*'))\n"
        + swap
    )
    assert (await api.execute(mine["id"], code))["status"] == "ok"
    reply = await api.request("GET", mine["id"], "files", file_id)
    assert reply.status == 404
    assert b"secret" not in reply.body
    assert PASSWD not in reply.body
    # The other session's file is untouched and the server still answers everyone.
    reply = await api.request("GET", other["id"], "files", theirs)
    assert (reply.status, reply.body) == (200, b"<b>their secret</b>")
    assert (await api.execute(mine["id"], "1 + 1"))["output"] == "2\n"


async def test_a_file_the_kernel_plants_in_the_store_is_not_served(
    api: Api, tmp_path: Path
) -> None:
    session = await api.create()
    file_id = await show_html(api, session["id"], "<b>mine</b>")
    planted = "A" * 24
    code = find_in_store(tmp_path / STORE, file_id) + (
        "folder = os.path.dirname(path)\n"
        f"os.symlink('/etc/passwd', os.path.join(folder, {planted!r} + '.html'))\n"
        f"os.symlink('/etc/passwd', os.path.join(folder, {planted!r}))\n"
    )
    assert (await api.execute(session["id"], code))["status"] == "ok"
    assert (await api.request("GET", session["id"], "files", planted)).status == 404


@pytest.mark.parametrize(
    # The transcript is written only when the session is deleted: after the swap.
    "agent_config", [{"transcript_write_interval": 600}], ids=["written-late"], indirect=True
)
async def test_a_swapped_file_does_not_reach_the_transcript(
    api: Api, jp_root_dir: Path, tmp_path: Path
) -> None:
    session = await api.create()
    file_id = await show_html(api, session["id"], "<b>mine</b>")
    code = find_in_store(tmp_path / STORE, file_id) + (
        "os.remove(path); os.symlink('/etc/passwd', path)"
    )
    assert (await api.execute(session["id"], code))["status"] == "ok"
    assert (await api.request("DELETE", session["id"])).status == 204
    notebook = nbformat.read(jp_root_dir / session["transcript_path"], as_version=4)
    assert [cell.source for cell in notebook.cells][1] == code
    assert PASSWD.decode().splitlines()[0] not in nbformat.writes(notebook)
