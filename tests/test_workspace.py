"""A session's workspace over REST: files in and out, confined to the working folder.

Every refusal is checked from the host side too: the file outside the folder is unchanged,
and nothing new appears there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from jupyter_exec_ext.workspace import UPLOAD_PREFIX

from .conftest import Api, Reply
from .test_api import assert_matches

SECRET = "the content nobody may read"
BINARY = bytes(range(256)) * 64 + b"\x00\r\n\x1a"


class Raw:
    """Requests with the path sent exactly as written (encoded dots, '..'), unlike jp_fetch."""

    def __init__(self, jp_serverapp: Any, jp_http_port: int) -> None:
        self.base = f"http://127.0.0.1:{jp_http_port}{jp_serverapp.base_url}api/agent-sessions/"
        self.headers = {"Authorization": f"token {jp_serverapp.identity_provider.token}"}

    async def __call__(self, method: str, path: str, body: bytes | None = None) -> Reply:
        if body is None and method == "PUT":
            body = b""
        request = HTTPRequest(
            self.base + path, method=method, headers=self.headers, body=body,
            allow_nonstandard_methods=True, request_timeout=60,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            if e.response is None:
                raise
            response = e.response
        return Reply(response.code, response.headers, response.body or b"")


@pytest.fixture
def raw(jp_serverapp: Any, jp_http_port: int) -> Raw:
    return Raw(jp_serverapp, jp_http_port)


def folder_of(manager: Any, session: dict[str, Any]) -> Path:
    return Path(manager.working_root, session["name"])


async def test_text_and_binary_files_go_in_and_out(api: Api, raw: Raw, manager: Any) -> None:
    session = await api.create()
    sid = session["id"]
    folder = folder_of(manager, session)

    created = await raw("PUT", f"{sid}/workspace/data/in/table.csv", b"a,b\n1,2\n")
    assert created.status == 201, created.body
    assert_matches("WorkspaceEntry", created.json)
    assert created.json["path"] == "data/in/table.csv"
    assert created.json["size"] == 8
    assert created.headers["Location"].endswith(f"/{sid}/workspace/data/in/table.csv")
    assert (folder / "data/in/table.csv").read_bytes() == b"a,b\n1,2\n"  # parents made

    assert (await raw("PUT", f"{sid}/workspace/blob.bin", BINARY)).status == 201
    assert (folder / "blob.bin").read_bytes() == BINARY

    replaced = await raw("PUT", f"{sid}/workspace/data/in/table.csv", "é,ü\n".encode())
    assert replaced.status == 200
    got = await raw("GET", f"{sid}/workspace/data/in/table.csv")
    assert got.status == 200
    assert got.body == "é,ü\n".encode()
    assert got.headers["Content-Type"] == "text/csv"
    got = await raw("GET", f"{sid}/workspace/blob.bin")
    assert got.body == BINARY
    assert got.headers["Content-Type"] == "application/octet-stream"
    # The kernel sees what was uploaded, and its files come out.
    result = await api.execute(
        sid, "print(open('data/in/table.csv', encoding='utf-8').read(), end='')\n"
        "_ = open('out.txt', 'w').write('from the kernel')"
    )
    assert result["output"] == "é,ü\n"
    assert (await raw("GET", f"{sid}/workspace/out.txt")).body == b"from the kernel"
    # An empty body is an empty file.
    assert (await raw("PUT", f"{sid}/workspace/empty", b"")).status == 201
    assert (folder / "empty").read_bytes() == b""
    assert not [p for p in folder.rglob("*") if p.name.startswith(UPLOAD_PREFIX)]


async def test_folders_are_listed(api: Api, raw: Raw, manager: Any) -> None:
    session = await api.create(name="lister")
    sid = session["id"]
    folder = folder_of(manager, session)
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "sub" / "b.txt").write_text("bb")
    (folder / "a.txt").write_text("a")
    (folder / "inside-link").symlink_to(folder / "a.txt")

    root = await raw("GET", f"{sid}/workspace")
    assert root.status == 200
    assert_matches("WorkspaceListing", root.json)
    entries = {e["name"]: e for e in root.json["entries"]}
    assert entries["a.txt"] == {**entries["a.txt"], "path": "a.txt", "type": "file", "size": 1}
    assert entries["sub"]["type"] == "directory"
    assert entries["inside-link"]["type"] == "symlink"
    assert root.json["path"] == ""
    assert root.json["truncated"] is False
    assert [e["name"] for e in root.json["entries"]] == sorted(entries)

    sub = await raw("GET", f"{sid}/workspace/sub/")
    assert sub.status == 200
    assert [(e["path"], e["type"]) for e in sub.json["entries"]] == [
        ("sub/b.txt", "file"), ("sub/deeper", "directory")
    ]
    # A symlink that stays inside the folder is followed.
    assert (await raw("GET", f"{sid}/workspace/inside-link")).body == b"a"

    missing = await raw("GET", f"{sid}/workspace/sub/nothing.txt")
    assert missing.status == 404
    assert "sub/nothing.txt" in missing.json["message"]


@pytest.mark.parametrize("agent_config", [{"max_workspace_entries": 3}])
async def test_a_listing_is_cut_at_the_limit(api: Api, raw: Raw, manager: Any) -> None:
    session = await api.create()
    for number in range(5):
        (folder_of(manager, session) / f"f{number}").write_text("x")
    listing = (await raw("GET", f"{session['id']}/workspace")).json
    assert len(listing["entries"]) == 3
    assert listing["truncated"] is True


async def test_files_and_folders_are_deleted(api: Api, raw: Raw, manager: Any) -> None:
    session = await api.create()
    sid = session["id"]
    folder = folder_of(manager, session)
    (folder / "tree" / "leaf").mkdir(parents=True)
    (folder / "tree" / "leaf" / "f.txt").write_text("x")
    (folder / "single.txt").write_text("x")

    assert (await raw("DELETE", f"{sid}/workspace/single.txt")).status == 204
    assert not (folder / "single.txt").exists()
    assert (await raw("DELETE", f"{sid}/workspace/tree")).status == 204
    assert not (folder / "tree").exists()
    missing = await raw("DELETE", f"{sid}/workspace/single.txt")
    assert missing.status == 404
    assert "single.txt" in missing.json["message"]
    assert (await raw("DELETE", f"{sid}/workspace/.")).status == 400
    assert folder.is_dir()


HOSTILE_PATHS = [
    "../outside/secret.txt",
    "sub/../../outside/secret.txt",
    "%2e%2e/outside/secret.txt",
    "%2E%2E%2Foutside%2Fsecret.txt",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2Fetc%2Fpasswd",
    "%2F" + "tmp%2Fnew-file",
    "link-out/secret.txt",
    "file-link",
    "nul%00byte",
]


@pytest.fixture
def outside(manager: Any, tmp_path: Path) -> Path:
    """A folder beside the working folders, with a secret the session must never touch."""
    folder = Path(manager.working_root) / "outside"
    folder.mkdir(parents=True)
    (folder / "secret.txt").write_text(SECRET)
    return folder


@pytest.mark.parametrize("path", HOSTILE_PATHS)
async def test_no_path_leads_out_of_the_folder(
    api: Api, raw: Raw, manager: Any, outside: Path, path: str
) -> None:
    session = await api.create(name="confined")
    sid = session["id"]
    folder = folder_of(manager, session)
    (folder / "sub").mkdir()
    (folder / "link-out").symlink_to(outside, target_is_directory=True)
    (folder / "file-link").symlink_to(outside / "secret.txt")
    before = host_view(outside, folder)

    read = await raw("GET", f"{sid}/workspace/{path}")
    assert read.status in (400, 404), (path, read.status)
    assert SECRET.encode() not in read.body
    assert b"root:" not in read.body
    write = await raw("PUT", f"{sid}/workspace/{path}", b"overwritten")
    assert write.status in (400, 404), (path, write.status)
    delete = await raw("DELETE", f"{sid}/workspace/{path}")
    assert delete.status in (400, 404), (path, delete.status)
    for reply in (read, write, delete):
        assert reply.json["message"]

    assert host_view(outside, folder) == before
    assert (outside / "secret.txt").read_text() == SECRET


def host_view(outside: Path, folder: Path) -> tuple[list[str], bool, list[Path]]:
    """What the host sees: the outside folder, /tmp/new-file, uploads left in the folder."""
    return (
        sorted(p.name for p in outside.iterdir()),
        os.path.lexists("/tmp/new-file"),
        [p for p in folder.rglob("*") if p.name.startswith(UPLOAD_PREFIX)],
    )


@pytest.mark.parametrize("agent_config", [{"max_upload_bytes": 1000}])
async def test_an_upload_past_the_limit_is_413_and_leaves_nothing(
    api: Api, raw: Raw, manager: Any
) -> None:
    session = await api.create()
    sid = session["id"]
    folder = folder_of(manager, session)
    assert (await raw("PUT", f"{sid}/workspace/ok.bin", b"x" * 1000)).status == 201
    too_big = await raw("PUT", f"{sid}/workspace/big.bin", b"x" * 1001)
    assert too_big.status == 413
    assert "1000" in too_big.json["message"]
    assert not (folder / "big.bin").exists()
    # A refused replacement keeps the old file.
    assert (await raw("PUT", f"{sid}/workspace/ok.bin", b"y" * 5000)).status == 413
    assert (folder / "ok.bin").read_bytes() == b"x" * 1000
    assert sorted(p.name for p in folder.iterdir() if p.name != "transcript.ipynb") == ["ok.bin"]


async def test_an_upload_without_a_length_past_the_limit_is_413(
    api: Api, jp_serverapp: Any, jp_http_port: int, manager: Any
) -> None:
    """A chunked upload (no Content-Length) is cut at the limit as it streams."""
    manager.max_upload_bytes = 100_000
    session = await api.create()
    raw = Raw(jp_serverapp, jp_http_port)

    async def chunks(write: Any) -> None:
        for _ in range(20):
            await write(b"z" * 10_000)

    request = HTTPRequest(
        f"{raw.base}{session['id']}/workspace/streamed.bin", method="PUT", headers=raw.headers,
        body_producer=chunks, request_timeout=60,
    )
    with pytest.raises(HTTPClientError) as refused:
        await AsyncHTTPClient().fetch(request)
    assert refused.value.code == 413
    folder = folder_of(manager, session)
    assert not (folder / "streamed.bin").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(UPLOAD_PREFIX)]


async def test_bad_input_on_every_workspace_route(api: Api, raw: Raw, manager: Any) -> None:
    session = await api.create()
    sid = session["id"]
    folder = folder_of(manager, session)
    (folder / "a-folder").mkdir()
    (folder / "a-file").write_text("x")
    for method, body in (("GET", None), ("PUT", b"x"), ("DELETE", None)):
        unknown = await raw(method, "no-such-session/workspace/x.txt", body)
        assert unknown.status == 404, method
        assert "no-such-session" in unknown.json["message"]
    assert (await raw("GET", "no-such-session/workspace")).status == 404
    cases = {
        "a-folder": 409,  # a file cannot replace a folder
        "a-file/below.txt": 409,  # a file where a folder is needed
        "new-folder/": 400,  # no file name
    }
    for path, status in cases.items():
        reply = await raw("PUT", f"{sid}/workspace/{path}", b"x")
        assert reply.status == status, (path, reply.body)
        assert reply.json["message"]
    assert (folder / "a-file").read_text() == "x"
    assert (await raw("GET", f"{sid}/workspace/a-file/below.txt")).status in (400, 404)
    assert (await raw("POST", f"{sid}/workspace/a-file", b"")).status == 405
    assert (await raw("PUT", f"{sid}/workspace", b"x")).status == 405
    os.mkfifo(folder / "fifo")
    assert (await raw("GET", f"{sid}/workspace/fifo")).status == 400


# -- what a call wrote ---------------------------------------------------------------------


async def test_each_result_lists_what_the_call_wrote(api: Api, raw: Raw, manager: Any) -> None:
    session = await api.create()
    sid = session["id"]
    folder = folder_of(manager, session)
    (folder / "old.txt").write_text("old")
    (folder / "gone.txt").write_text("gone")
    # Changes made outside calls are not the next call's doing.
    assert (await raw("PUT", f"{sid}/workspace/uploaded.txt", b"up")).status == 201

    result = await api.execute(sid, "x = 1")
    assert_matches("ExecutionResult", result)
    assert result["workspace_changes"] == []

    result = await api.execute(
        sid,
        "import os\n"
        "open('report.csv', 'w').write('a,b\\n')\n"
        "open('old.txt', 'a').write('er')\n"
        "os.remove('gone.txt')\n"
        "os.makedirs('out/deep')\n"
        "open('out/deep/plot.png', 'wb').write(b'1234567')\n"
        "open('scratch', 'w').close(); os.remove('scratch')\n",
    )
    changes = sorted(result["workspace_changes"], key=lambda c: c["path"])
    assert changes == [
        {"path": "gone.txt", "size": None, "change": "deleted"},
        {"path": "old.txt", "size": 5, "change": "modified"},
        {"path": "out/deep/plot.png", "size": 7, "change": "created"},
        {"path": "report.csv", "size": 4, "change": "created"},
    ]
    # The transcript, written by the server, is never listed.
    await manager._sessions[sid].transcript.flush()
    result = await api.execute(
        sid, "import shutil, os\nos.rename('report.csv', 'final.csv')\nshutil.rmtree('out')"
    )
    changes = sorted(result["workspace_changes"], key=lambda c: c["path"])
    assert changes == [
        {"path": "final.csv", "size": 4, "change": "created"},
        {"path": "out/deep/plot.png", "size": None, "change": "deleted"},
        {"path": "report.csv", "size": None, "change": "deleted"},
    ]
    # A folder moved in brings its files, and one written but not yet closed is seen.
    outside = folder.parent / "elsewhere"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "f.txt").write_text("f")
    result = await api.execute(
        sid,
        f"import shutil\nshutil.move({str(outside)!r}, 'moved')\n"
        "log = open('log.txt', 'w'); log.write('line'); log.flush()",
    )
    changes = sorted(result["workspace_changes"], key=lambda c: c["path"])
    assert changes == [
        {"path": "log.txt", "size": 4, "change": "created"},
        {"path": "moved/inner/f.txt", "size": 1, "change": "created"},
    ]
    result = await api.execute(sid, "open('moved/inner/f.txt', 'w').write('changed')")
    assert result["workspace_changes"] == [
        {"path": "moved/inner/f.txt", "size": 7, "change": "modified"}
    ]


@pytest.mark.parametrize("agent_config", [{"track_workspace_changes": False}])
async def test_tracking_can_be_switched_off(api: Api) -> None:
    session = await api.create()
    result = await api.execute(session["id"], "open('f.txt', 'w').write('x')")
    assert result["workspace_changes"] == []


@pytest.mark.parametrize("agent_config", [{"max_workspace_entries": 5}])
async def test_changes_past_the_limit_are_cut_and_the_result_says_so(api: Api) -> None:
    session = await api.create()
    result = await api.execute(
        session["id"], "for n in range(30):\n    open(f'f{n}.txt', 'w').write('x')"
    )
    assert len(result["workspace_changes"]) <= 5
    assert "workspace_changes lists only some" in result["output"]


async def test_an_upload_without_credentials_writes_nothing(
    api: Api, jp_serverapp: Any, jp_http_port: int, manager: Any
) -> None:
    session = await api.create()
    raw = Raw(jp_serverapp, jp_http_port)
    raw.headers = {"Authorization": "token wrong"}
    refused = await raw("PUT", f"{session['id']}/workspace/intruder.txt", b"x" * 100_000)
    assert refused.status == 403
    assert sorted(p.name for p in folder_of(manager, session).iterdir()) == ["transcript.ipynb"]
