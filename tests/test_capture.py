"""OutputCapture on its own: order, text rules and bounded truncation, with a real store."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from jupyter_exec_ext.capture import OutputCapture, strip_ansi
from jupyter_exec_ext.store import OutputStore
from kernel_helper import CONTINUED_KEY, TEXT_PIECE_MSG_TYPE


@pytest.fixture
def store(tmp_path: Path) -> OutputStore:
    return OutputStore(tmp_path / "store", "/base/api/agent-sessions/S/files/")


def test_streams_are_joined_exactly_and_merged(store: OutputStore) -> None:
    capture = OutputCapture(store)
    for chunk in ["a", "b", "c\n"]:
        capture.handle("stream", {"name": "stdout", "text": chunk})
    capture.handle("stream", {"name": "stderr", "text": "warn"})
    capture.handle("execute_result", {"data": {"text/plain": "42"}, "execution_count": 3})
    result = capture.result("ok", 3)
    assert result["output"] == "abc\nwarn\n42\n"
    assert result["outputs"] == [
        {"type": "stream", "name": "stdout", "text": "abc\n"},
        {"type": "stream", "name": "stderr", "text": "warn"},
        {
            "type": "result",
            "text": "42",
            "mime_type": "text/plain",
            "execution_count": 3,
            "mime_types": ["text/plain"],
            "files": [],
        },
    ]
    assert result["truncated"] is False


def test_images_are_files_and_named_in_the_text(store: OutputStore) -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    capture = OutputCapture(store)
    capture.handle(
        "display_data",
        {
            "data": {
                "text/plain": "<Figure>",
                "image/png": base64.b64encode(png).decode(),
                "image/svg+xml": "<svg/>",
            }
        },
    )
    result = capture.result("ok", 1)
    [stored] = result["files"]
    assert stored["mime_type"] == "image/png"
    assert stored["url"] == f"/base/api/agent-sessions/S/files/{stored['id']}"
    assert result["output"] == f"<Figure>\n[image/png: {stored['id']}]\n"
    assert store.get(stored["id"]).path.read_bytes() == png  # type: ignore[union-attr]


def test_errors_lose_ansi_codes(store: OutputStore) -> None:
    capture = OutputCapture(store)
    capture.handle("stream", {"name": "stdout", "text": "partial"})
    capture.handle(
        "error",
        {"ename": "E", "evalue": "\x1b[31mv\x1b[0m", "traceback": ["\x1b[0;31mE\x1b[0m: v"]},
    )
    result = capture.result("error", 1)
    assert result["output"] == "partial\nE: v\n"
    assert result["error"] == {"ename": "E", "evalue": "v", "traceback": ["E: v"]}


def test_strip_ansi_handles_cursor_and_title_codes() -> None:
    assert strip_ansi("\x1b[2K\x1b[1Gdone\x1b]0;title\x07!") == "done!"


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 5000])
def test_truncation_keeps_head_and_tail_and_the_whole_text(
    store: OutputStore, chunk_size: int
) -> None:
    text = "".join(f"{i:05d}\n" for i in range(2000))  # 12,000 characters
    capture = OutputCapture(store, max_chars=1000)
    for start in range(0, len(text), chunk_size):
        capture.handle("stream", {"name": "stdout", "text": text[start : start + chunk_size]})
    result = capture.result("ok", 1)
    assert result["truncated"] is True
    head, _, rest = result["output"].partition("\n[... ")
    tail = rest.split(" ...]\n", 1)[1]
    assert head == text[:500]
    assert tail == text[-500:]
    assert f"{len(text) - 1000} characters cut" in result["output"]
    [full] = result["files"]
    assert store.get(full["id"]).path.read_text() == text  # type: ignore[union-attr]
    assert [item["type"] for item in result["outputs"]] == ["stream", "truncated", "stream"]


def test_truncation_keeps_the_final_error(store: OutputStore) -> None:
    capture = OutputCapture(store, max_chars=200)
    capture.handle("stream", {"name": "stdout", "text": "x" * 10_000})
    capture.handle("error", {"ename": "ValueError", "evalue": "late", "traceback": ["boom"]})
    result = capture.result("error", 1)
    assert result["output"].endswith("x\nboom\n")
    assert result["outputs"][-1]["type"] == "error"
    assert result["error"]["evalue"] == "late"


def test_a_text_sent_in_pieces_is_cut_like_a_whole_one(store: OutputStore) -> None:
    # The kernel helper sends a long result as its cut message, then its whole text in pieces.
    text = "".join(f"{i:05d}\n" for i in range(2000))
    capture = OutputCapture(store, max_chars=1000)
    capture.handle(
        "execute_result",
        {"data": {"text/plain": "cut by the kernel"}, "execution_count": 1},
        {CONTINUED_KEY: {"text/plain": len(text)}},
    )
    for start in range(0, len(text), 700):
        piece = {"field": "text/plain", "text": text[start : start + 700]}
        capture.handle(TEXT_PIECE_MSG_TYPE, piece)
    result = capture.result("ok", 1)
    head, _, rest = result["output"].partition("\n[... ")
    assert head == text[:500]
    assert rest.split(" ...]\n", 1)[1] == text[-499:] + "\n"
    first, marker, last = result["outputs"]
    assert (first["text"], last["text"]) == (text[:500], text[-499:])
    assert first["truncated"]
    assert last["truncated"]
    assert marker["type"] == "truncated"
    [full] = result["files"]
    assert store.get(full["id"]).path.read_text() == text + "\n"  # type: ignore[union-attr]


def test_no_limit_keeps_everything(store: OutputStore) -> None:
    capture = OutputCapture(store, max_chars=0)
    capture.handle("stream", {"name": "stdout", "text": "z" * 300_000})
    result = capture.result("ok", 1)
    assert result["truncated"] is False
    assert len(result["output"]) == 300_000


def test_store_refuses_ids_it_did_not_make(store: OutputStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    for hostile in ["../secret.txt", str(secret), "..%2Fsecret.txt", "", "a" * 200]:
        assert store.get(hostile) is None
