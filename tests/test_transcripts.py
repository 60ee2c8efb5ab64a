"""Transcript notebooks: one cell per call, valid, in order, listed by the server's sessions."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import nbformat
import pytest

from jupyter_exec_ext.store import OutputStore
from jupyter_exec_ext.transcript import Transcript

from .conftest import Api


async def read_transcript(root: Path, path: str, cells: int) -> Any:
    """The transcript once it holds ``cells`` cells (it is written in the background)."""
    notebook = None
    for _ in range(200):
        try:
            notebook = nbformat.read(root / path, as_version=4)
        except (FileNotFoundError, nbformat.reader.NotJSONError):
            # Not written yet, or caught in the middle of an append.
            notebook = None
        if notebook is not None and len(notebook.cells) >= cells:
            break
        await asyncio.sleep(0.05)
    assert notebook is not None
    nbformat.validate(notebook)
    return notebook


async def test_every_call_becomes_a_cell(api: Api, jp_root_dir: Path) -> None:
    session = await api.create(name="scribe")
    assert session["transcript_path"] == "agent-sessions/scribe/transcript.ipynb"
    empty = await read_transcript(jp_root_dir, session["transcript_path"], 0)
    assert empty.metadata.kernelspec.name == "python3"

    await api.execute(session["id"], "print('hello')\nx = 41")
    await api.execute(
        session["id"], "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\nx + 1"
    )
    await api.execute(session["id"], "print('partial')\n1/0")
    notebook = await read_transcript(jp_root_dir, session["transcript_path"], 3)

    first, second, third = notebook.cells
    assert first.source == "print('hello')\nx = 41"
    assert first.execution_count == 1
    assert first.outputs == [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    assert second.execution_count == 2
    assert [output.output_type for output in second.outputs] == ["display_data", "execute_result"]
    assert second.outputs[0].data["image/png"].startswith("iVBORw0KGgo")  # base64 of a PNG
    assert second.outputs[1].data["text/plain"] == "42"
    assert [output.output_type for output in third.outputs] == ["stream", "error"]
    assert third.outputs[1].ename == "ZeroDivisionError"
    assert third.metadata.agent_session.status == "error"


async def test_calls_back_to_back_lose_no_cell(api: Api, jp_root_dir: Path) -> None:
    session = await api.create()
    results = await asyncio.gather(
        *(api.execute(session["id"], f"print({index})") for index in range(12))
    )
    notebook = await read_transcript(jp_root_dir, session["transcript_path"], 12)
    assert len(notebook.cells) == 12
    counts = [cell.execution_count for cell in notebook.cells]
    assert counts == sorted(counts) == sorted(r["execution_count"] for r in results)
    by_count = {r["execution_count"]: r["output"] for r in results}
    for cell in notebook.cells:
        assert cell.outputs[0].text == by_count[cell.execution_count]


async def test_huge_output_is_cut_in_the_transcript_too(api: Api, jp_root_dir: Path) -> None:
    session = await api.create()
    calls = ["print('y' * 5_000_000)", "'r' * 3_000_000", "raise ValueError('e' * 3_000_000)"]
    for code in calls:
        assert (await api.execute(session["id"], code))["truncated"] is True
    notebook = await read_transcript(jp_root_dir, session["transcript_path"], len(calls))
    assert [cell.outputs[0].output_type for cell in notebook.cells] == [
        "stream", "execute_result", "error"
    ]
    # Each cell keeps 100,000 characters of output (an error its value and traceback).
    assert (jp_root_dir / session["transcript_path"]).stat().st_size < 700_000


async def test_session_is_listed_with_its_transcript_and_kernel(
    api: Api, jp_fetch: Any
) -> None:
    session = await api.create(name="listed")
    response = await jp_fetch("api", "sessions")
    [server_session] = json.loads(response.body)
    assert server_session["path"] == session["transcript_path"]
    assert server_session["type"] == "notebook"
    assert server_session["kernel"]["id"] == session["kernel_id"]

    await api.request("DELETE", session["id"])
    response = await jp_fetch("api", "sessions")
    assert json.loads(response.body) == []


async def test_delete_keeps_the_transcript_and_work(api: Api, jp_root_dir: Path) -> None:
    session = await api.create(name="keeper")
    await api.execute(session["id"], "open('result.csv', 'w').write('a,b\\n')\n'saved'")
    await api.request("DELETE", session["id"])
    folder = jp_root_dir / "agent-sessions" / "keeper"
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible == ["result.csv", "transcript.ipynb"]
    notebook = nbformat.read(folder / "transcript.ipynb", as_version=4)
    assert len(notebook.cells) == 1

    again = await api.create(name="keeper")
    assert again["transcript_path"] == "agent-sessions/keeper/transcript-2.ipynb"


@pytest.mark.parametrize("agent_config", [{"transcripts": False}])
async def test_transcripts_can_be_turned_off(
    api: Api, jp_root_dir: Path, jp_fetch: Any
) -> None:
    session = await api.create(name="quiet")
    assert session["transcript_path"] is None
    await api.execute(session["id"], "1")
    assert not (jp_root_dir / "agent-sessions" / "quiet" / "transcript.ipynb").exists()
    response = await jp_fetch("api", "sessions")
    assert json.loads(response.body) == []


async def test_a_persons_edit_between_calls_is_kept(api: Api, jp_root_dir: Path) -> None:
    session = await api.create()
    await api.execute(session["id"], "print('first')")
    path = jp_root_dir / session["transcript_path"]
    notebook = await read_transcript(jp_root_dir, session["transcript_path"], 1)
    notebook.cells.append(nbformat.v4.new_markdown_cell("A note from a person"))
    nbformat.write(notebook, path)
    await api.execute(session["id"], "print('second')")
    notebook = await read_transcript(jp_root_dir, session["transcript_path"], 3)
    assert [cell.cell_type for cell in notebook.cells] == ["code", "markdown", "code"]
    assert notebook.cells[1].source == "A note from a person"


async def test_calls_are_appended_without_rewriting_the_notebook(
    api: Api, jp_root_dir: Path
) -> None:
    # A rewrite replaces the file (a new inode) and costs as much as the notebook is long;
    # an append writes over its end, so a long session's calls stay cheap.
    session = await api.create()
    await api.execute(session["id"], "1")
    path = jp_root_dir / session["transcript_path"]
    await read_transcript(jp_root_dir, session["transcript_path"], 1)
    inode = path.stat().st_ino
    for number in range(2, 5):
        await api.execute(session["id"], str(number))
    notebook = await read_transcript(jp_root_dir, session["transcript_path"], 4)
    assert [cell.source for cell in notebook.cells] == ["1", "2", "3", "4"]
    assert path.stat().st_ino == inode


async def test_unusual_characters_reach_the_transcript_unchanged(
    api: Api, jp_root_dir: Path
) -> None:
    text = "line\u2028separator \x85 next-line \u00e9 \U0001f600 \"quoted\" \\ back"
    session = await api.create()
    await api.execute(session["id"], f"print({text!r})")
    notebook = await read_transcript(jp_root_dir, session["transcript_path"], 1)
    assert notebook.cells[0].source == f"print({text!r})"
    assert notebook.cells[0].outputs[0].text == text + "\n"


async def test_without_files_the_notebook_is_saved_through_the_contents_manager(
    jp_serverapp: Any, jp_root_dir: Path, tmp_path: Path
) -> None:
    # Contents managers that keep no files (a database, S3) get whole notebooks to save.
    transcript = Transcript(
        jp_serverapp.contents_manager,
        "kept-elsewhere.ipynb",
        kernelspec={"name": "python3", "display_name": "Python 3", "language": "python"},
        store=OutputStore(tmp_path / "store", "/files/"),
        log=logging.getLogger("test"),
    )
    result = {
        "status": "ok",
        "execution_count": 1,
        "outputs": [{"type": "stream", "name": "stdout", "text": "hi\n"}],
    }
    transcript.start()
    transcript.append("print('hi')", result)
    await transcript.flush()
    transcript.append("print('hi')", {**result, "execution_count": 2})
    await transcript.flush()
    notebook = nbformat.read(jp_root_dir / "kept-elsewhere.ipynb", as_version=4)
    assert [cell.execution_count for cell in notebook.cells] == [1, 2]
    assert notebook.cells[1].outputs[0].text == "hi\n"
