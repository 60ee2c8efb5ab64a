"""Transcript notebooks: every call of a session appended as a code cell, for people to read.

The transcript is an ordinary notebook of the server: the file browser shows it, and
JupyterLab opens it on the session's live kernel. Writes happen off the request path, in
order, one session at a time, and calls that come close together are gathered into one write.

Rewriting a whole notebook costs time and memory in proportion to its length, and an agent's
session can run for thousands of calls. So when the server keeps notebooks as files, the
transcript is written with its cells last, and new cells are written over the closing
brackets: a call costs the same in the ten-thousandth cell as in the first, and the server
holds no copy of the notebook. When the file changed since our last write (a person edited
it) or the contents manager keeps no files, the notebook is read, extended and written whole.

When the notebook is open in JupyterLab with jupyter-collaboration, cells are written
through the room's live document instead (:mod:`jupyter_exec_ext.live_transcript`): one
writer at a time, never the file under an open room.

The transcript is not signed as trusted: its outputs come from agent code, so JupyterLab
treats them like those of any notebook from elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import nbformat
from jupyter_core.utils import ensure_async

from . import mime
from .live_transcript import LiveNotebooks, TranscriptCall
from .store import OutputStore, StoredFileChangedError

#: How our transcripts end: the close of the cell list, then of the notebook.
_TAIL = b"\n ]\n}\n"


def notebook_outputs(result: dict[str, Any], store: OutputStore) -> list[dict[str, Any]]:
    """The outputs of an execution result as a notebook holds them (images inline).

    Built as plain dicts, not with nbformat's ``new_output``: that validates each output
    against the notebook schema, which took a tenth of the server's time for small calls.
    A notebook that is written whole is validated as a whole.
    """
    outputs: list[dict[str, Any]] = []
    for item in result["outputs"]:
        kind = item["type"]
        if kind == "stream":
            outputs.append(_stream(item["name"], item["text"]))
        elif kind == "result":
            outputs.append(
                {
                    "output_type": "execute_result",
                    "data": _mime_bundle(item, store),
                    "metadata": {},
                    "execution_count": item["execution_count"],
                }
            )
        elif kind == "display":
            outputs.append(
                {"output_type": "display_data", "data": _mime_bundle(item, store), "metadata": {}}
            )
        elif kind == "error":
            outputs.append(
                {
                    "output_type": "error",
                    "ename": item["ename"],
                    "evalue": item["evalue"],
                    "traceback": item["traceback"],
                }
            )
        elif kind == "note":
            outputs.append(_stream("stderr", f"[{item['text']}]\n"))
        elif kind == "truncated":
            where = f"; the whole output is in file {item['file']}" if item["file"] else ""
            outputs.append(
                _stream("stderr", f"\n[... {item['omitted_chars']} characters cut{where} ...]\n")
            )
    return outputs


def _stream(name: str, text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


def _mime_bundle(item: dict[str, Any], store: OutputStore) -> dict[str, Any]:
    """The notebook's MIME bundle of a result or display: its text and its files' data.

    The text goes under its own type, so JupyterLab renders a Markdown display as Markdown,
    and under ``text/plain`` as well, for viewers that render nothing else.
    """
    text = item["text"] or ""
    data: dict[str, Any] = {"text/plain": text}
    text_type = item.get("mime_type")
    if text_type and text_type != "text/plain" and not item.get("truncated"):
        _put(data, text_type, text.encode("utf-8", errors="replace"))
    for file_id in item["files"]:
        stored = store.get(file_id)
        if stored is None:
            continue
        try:
            # Read through the store, as downloads are: the kernel may swap the file meanwhile.
            with stored.open() as handle:
                raw = handle.read()
        except StoredFileChangedError:
            continue
        _put(data, stored.mime_type, raw)
    return data


def _put(data: dict[str, Any], mime_type: str, raw: bytes) -> None:
    """Add ``raw`` data of ``mime_type`` to a bundle as the notebook format holds it.

    JSON types are JSON values there; data that does not parse is left out (its text is
    the bundle's ``text/plain`` already, or its file is in the store).
    """
    if not mime.is_text_type(mime_type):
        data[mime_type] = base64.b64encode(raw).decode("ascii")
        return
    text = raw.decode("utf-8", errors="replace")
    if not mime.is_json_type(mime_type):
        data[mime_type] = text
        return
    try:
        data[mime_type] = json.loads(text)
    except ValueError:
        return


def _merge(notebook: Any, cells: list[dict[str, Any]]) -> None:
    """Put ``cells`` in the notebook: over a cell of the same id (a room saved it while its
    call ran), else at the end."""
    where = {cell.get("id"): index for index, cell in enumerate(notebook.cells)}
    for cell in cells:
        index = where.get(cell["id"])
        if index is None:
            notebook.cells.append(cell)
        else:
            notebook.cells[index] = cell


def _cell_json(cell: dict[str, Any]) -> str:
    text = json.dumps(cell, indent=1, sort_keys=True, ensure_ascii=False)
    # split("\n"), not splitlines(): strings may hold U+2028 or U+0085, which json.dumps
    # leaves as they are and splitlines() would treat as line ends.
    return "\n".join("  " + line for line in text.split("\n"))


def notebook_bytes(notebook: dict[str, Any]) -> bytes:
    """The notebook as JSON with its cells last, so that cells can be appended in place."""
    head = json.dumps(
        {key: value for key, value in notebook.items() if key != "cells"},
        indent=1,
        sort_keys=True,
        ensure_ascii=False,
    )
    cells = ",\n".join(_cell_json(cell) for cell in notebook["cells"])
    # head ends with "\n}": the cells go in before that brace.
    return f'{head[:-2]},\n "cells": [\n{cells}'.encode() + _TAIL


class Transcript:
    """The transcript notebook of one session, appended to in the background, in call order."""

    def __init__(
        self,
        contents_manager: Any,
        path: str,
        *,
        kernelspec: dict[str, str],
        store: OutputStore,
        log: logging.Logger,
        os_path: Path | None = None,
        write_interval: float = 0.0,
        live: LiveNotebooks | None = None,
    ) -> None:
        """Write to ``path`` (an API path of ``contents_manager``).

        ``os_path`` is where that path is on disk when the contents manager keeps files:
        cells are then appended in place. A queued cell is written at most
        ``write_interval`` seconds after its call ended, together with the cells of the calls
        that came meanwhile. With ``live``, cells go to the room's live document of the
        notebook while one is open.
        """
        self.contents_manager = contents_manager
        self.path = path
        self.os_path = os_path
        self.kernelspec = kernelspec
        self.store = store
        self.log = log
        self.write_interval = write_interval
        self.live = live if live is not None and live.available else None
        # Calls not completely written yet, in call order (a running one last).
        self._pending: list[TranscriptCall] = []
        self._writer: asyncio.Task[None] | None = None
        self._write_now = asyncio.Event()
        self._news = asyncio.Event()
        # When each writer last wrote (loop time): the other waits its hold-off after it.
        self._last_file_write = -math.inf
        self._last_live_write = -math.inf
        # The file's size and modification time after our last write: while they hold, the
        # file is ours to append to.
        self._on_disk: tuple[int, int] | None = None

    def start(self) -> None:
        """Write the empty notebook in the background; cells queued meanwhile follow it.

        Off the session's start: the first write of a session creates its folder and file.
        """
        self._writer = asyncio.ensure_future(self._create_and_write())

    async def _create_and_write(self) -> None:
        try:
            await self._save(self._new_notebook())
        except Exception:
            self.log.exception("Could not create the transcript %s", self.path)
        await self._write_pending()

    def begin(self, code: str) -> TranscriptCall | None:
        """A call starts: its cell shows at once where the notebook is open live.

        Returns the call to report its outputs and its end on, or None when transcripts are
        not written live here (the cell is then written when the call ends).
        """
        if self.live is None:
            return None
        call = TranscriptCall(code)
        self._queue(call)
        return call

    def output(self, call: TranscriptCall, event: dict[str, Any]) -> None:
        """An output event of a running call (shown live where the notebook is open)."""
        call.events.append(event)
        self._news.set()

    def append(self, code: str, result: dict[str, Any], call: TranscriptCall | None = None) -> None:
        """The call ended: queue its code cell; the write happens in the background."""
        if call is None or call not in self._pending:
            call = TranscriptCall(code)
            self._queue(call)
        call.result = result
        self._news.set()

    def _queue(self, call: TranscriptCall) -> None:
        self._pending.append(call)
        self._news.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_pending())

    async def flush(self) -> None:
        """Write every queued cell now and wait until it is in the file (an open room
        saves at once)."""
        self._write_now.set()
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        if self.live is not None and self._last_live_write > -math.inf:
            # The room saves a moment after our last change; the file must be complete now.
            document = await self.live.document(self.path)
            if document is not None:
                await self.live.save_if_unwatched(document, force=True)

    async def _write_pending(self) -> None:
        # Calls that arrive while this task waits or writes are taken by the next round of
        # this loop, so a burst of calls costs few writes and no cell is lost or reordered.
        while self._pending:
            self._news.clear()
            document = await self.live.document(self.path) if self.live else None
            if document is not None:
                await self._write_live(document)
            else:
                await self._write_file()

    async def _write_live(self, document: Any) -> None:
        """Bring every pending call's cell in the live document up to date."""
        assert self.live is not None
        loop = asyncio.get_running_loop()
        wait = self._last_file_write + self.live.file_holdoff - loop.time()
        if wait > 0:
            # The room may not have reloaded our last write of the file yet.
            await asyncio.sleep(wait)
            return
        if not self._write_now.is_set():
            # Gather: a short call's start and end become one update, and many small prints
            # one per interval.
            await asyncio.sleep(self.live.output_interval)
        try:
            for call in list(self._pending):
                cell = self._cell(call) if call.result is not None else None
                if cell is not None or call.events or not call.went_live:
                    self.live.write(document, call, cell, self._outputs)
                if cell is not None:
                    self._pending.remove(call)
        except Exception:
            # Cells must not be lost, nor retried forever: from now on, the file is written.
            self.log.exception(
                "Could not write the live transcript %s; writing the file from now on", self.path
            )
            self.live = None
            return
        self._last_live_write = loop.time()
        if not self._pending or self._write_now.is_set():
            await self.live.save_if_unwatched(document, force=self._write_now.is_set())
        if self._pending and not self._write_now.is_set():
            # A call runs: wait for its news (and look for the room now and then).
            await self._wait_for_news(1.0)

    async def _write_file(self) -> None:
        """Write the calls that ended to the file (a running call waits for its end)."""
        loop = asyncio.get_running_loop()
        if self.live is not None:
            wait = self._last_live_write + self.live.live_holdoff - loop.time()
            if wait > 0:
                # The room that had our cells may still be saving them.
                await asyncio.sleep(wait)
                return
        ended = 0
        while ended < len(self._pending) and self._pending[ended].result is not None:
            ended += 1
        if not ended:
            # Only a running call: check for a room now and then (a tab may open).
            await self._wait_for_news(1.0)
            await asyncio.sleep(self.live.output_interval if self.live else 0)
            return
        if self.write_interval > 0 and not self._write_now.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._write_now.wait(), self.write_interval)
            if self.live is not None and await self.live.document(self.path) is not None:
                return  # a tab opened the notebook meanwhile: the cells go there
        while ended < len(self._pending) and self._pending[ended].result is not None:
            ended += 1
        calls, self._pending = self._pending[:ended], self._pending[ended:]
        try:
            cells = [self._cell(call) for call in calls]
            went_live = any(call.went_live for call in calls)
            if went_live or not self._append_in_place(cells):
                notebook = await self._load()
                _merge(notebook, cells)
                await self._save(notebook)
        except Exception:
            self._on_disk = None  # read the file afresh next time
            self.log.exception("Could not append to the transcript %s", self.path)
        self._last_file_write = loop.time()

    async def _wait_for_news(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._news.wait(), timeout)

    def _outputs(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return notebook_outputs({"outputs": events}, self.store)

    def _cell(self, call: TranscriptCall) -> dict[str, Any]:
        result = call.result
        assert result is not None
        return {
            "cell_type": "code",
            "id": call.cell_id,
            "execution_count": result["execution_count"],
            "metadata": {"agent_session": {"status": result["status"]}},
            "outputs": notebook_outputs(result, self.store),
            "source": call.code,
        }

    def _append_in_place(self, cells: list[dict[str, Any]]) -> bool:
        """Write ``cells`` over the end of a file that is as we left it; False if it is not."""
        if self.os_path is None or self._on_disk is None:
            return False
        size, mtime = self._on_disk
        end = size - len(_TAIL)
        try:
            with self.os_path.open("r+b") as file:
                stat = os.fstat(file.fileno())
                if (stat.st_size, stat.st_mtime_ns) != (size, mtime) or end < 1:
                    return False
                # The byte before the tail closes the last cell, or opens the empty list.
                file.seek(end - 1)
                last, tail = file.read(1), file.read()
                if tail != _TAIL:
                    return False
                separator = ",\n" if last == b"}" else ""
                file.seek(end)
                added = separator + ",\n".join(_cell_json(cell) for cell in cells)
                file.write(added.encode() + _TAIL)
                file.flush()
                stat = os.fstat(file.fileno())
        except FileNotFoundError:
            return False
        self._on_disk = (stat.st_size, stat.st_mtime_ns)
        return True

    async def _load(self) -> Any:
        """The notebook as it is on disk (a person may have edited it), or a new one."""
        if not await ensure_async(self.contents_manager.file_exists(self.path)):
            return self._new_notebook()
        model = await ensure_async(self.contents_manager.get(self.path, content=True))
        return nbformat.from_dict(model["content"])

    def _new_notebook(self) -> Any:
        notebook = nbformat.v4.new_notebook()
        notebook.metadata["kernelspec"] = self.kernelspec
        notebook.metadata["language_info"] = {"name": self.kernelspec.get("language", "")}
        return notebook

    async def _save(self, notebook: Any) -> None:
        """Write the whole notebook: as a file of our layout, or through the contents manager."""
        nbformat.validate(notebook)
        if self.os_path is None:
            model = {"type": "notebook", "format": "json", "content": notebook}
            await ensure_async(self.contents_manager.save(model, self.path))
            return
        self._on_disk = None
        # In a thread: a long notebook takes a while to encode and write.
        self._on_disk = await asyncio.to_thread(self._replace_file, notebook)

    def _replace_file(self, notebook: Any) -> tuple[int, int]:
        """Write the whole notebook as a new file renamed over the old one, so that a reader
        never sees half a notebook; return the new file's size and mtime.
        """
        assert self.os_path is not None
        data = notebook_bytes(notebook)
        self.os_path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=self.os_path.parent, prefix=f".{self.os_path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            # mkstemp makes the file private; a transcript is as readable as it was before.
            mode = self.os_path.stat().st_mode & 0o777 if self.os_path.exists() else 0o644
            os.chmod(temporary, mode)
            os.replace(temporary, self.os_path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        stat = self.os_path.stat()
        return stat.st_size, stat.st_mtime_ns
