"""WorkspaceChanges on a real folder, both ways: the inotify queue and the fallback scans."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_exec_ext.changes import WorkspaceChanges


def _sorted(changes: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return sorted((c["path"], c["change"], c["size"]) for c in changes)


@pytest.fixture(params=[True, False], ids=["inotify", "scans"])
def tracker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkspaceChanges]:
    (tmp_path / "keep.txt").write_text("k")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a.txt").write_text("a")
    changes = WorkspaceChanges(
        tmp_path, 1000, lambda path: path == "ignored.txt", use_inotify=request.param
    )
    changes.start()
    if sys.platform.startswith("linux"):
        assert changes.uses_inotify is request.param
    yield changes
    changes.close()


def test_a_call_sees_what_it_wrote(tracker: WorkspaceChanges) -> None:
    root = tracker.root
    tracker.begin_call()
    (root / "new.txt").write_text("12345")
    (root / "keep.txt").write_text("kk")
    shutil.rmtree(root / "old")
    (root / "made" / "deep").mkdir(parents=True)
    (root / "made" / "deep" / "f.bin").write_bytes(b"xyz")
    (root / "ignored.txt").write_text("not ours")
    assert _sorted(tracker.end_call()) == [
        ("keep.txt", "modified", 2),
        ("made/deep/f.bin", "created", 3),
        ("new.txt", "created", 5),
        ("old/a.txt", "deleted", None),
    ]
    tracker.begin_call()
    assert tracker.end_call() == []


def test_changes_between_calls_are_not_reported(tracker: WorkspaceChanges) -> None:
    root = tracker.root
    (root / "before.txt").write_text("x")
    os.remove(root / "keep.txt")
    tracker.begin_call()
    (root / "during.txt").write_text("y")
    assert _sorted(tracker.end_call()) == [("during.txt", "created", 1)]


def test_a_folder_past_the_limit_is_cut(tmp_path: Path) -> None:
    for use_inotify in (True, False):
        tracker = WorkspaceChanges(tmp_path, 10, use_inotify=use_inotify)
        tracker.start()
        tracker.begin_call()
        for number in range(30):
            (tmp_path / f"f{number}-{use_inotify}").write_text("x")
        changes = tracker.end_call()
        assert len(changes) <= 10
        assert tracker.truncated
        tracker.close()
        for path in tmp_path.iterdir():
            path.unlink()
