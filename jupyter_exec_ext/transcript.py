"""Transcript notebooks: every call of a session appended as a code cell, for people to read.

The transcript is written through the server's contents manager, so it is an ordinary
notebook of the server: the file browser shows it, and JupyterLab opens it on the session's
live kernel. Writes happen off the request path, in order, one session at a time, and calls
that come close together are gathered into one write: rewriting a notebook costs far more than
a small call, so writing after every call would make the server several times slower.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Any

import nbformat
from jupyter_core.utils import ensure_async

from .store import OutputStore, StoredFileChangedError

_BINARY_MIME_TYPES = frozenset({"image/png", "image/jpeg"})


def notebook_outputs(result: dict[str, Any], store: OutputStore) -> list[Any]:
    """The outputs of an execution result as a notebook holds them (images inline)."""
    outputs = []
    for item in result["outputs"]:
        kind = item["type"]
        if kind == "stream":
            outputs.append(nbformat.v4.new_output("stream", name=item["name"], text=item["text"]))
        elif kind in ("result", "display"):
            data = _mime_bundle(item, store)
            if kind == "result":
                outputs.append(
                    nbformat.v4.new_output(
                        "execute_result", data=data, execution_count=item["execution_count"]
                    )
                )
            else:
                outputs.append(nbformat.v4.new_output("display_data", data=data))
        elif kind == "error":
            outputs.append(
                nbformat.v4.new_output(
                    "error", ename=item["ename"], evalue=item["evalue"], traceback=item["traceback"]
                )
            )
        elif kind == "note":
            outputs.append(nbformat.v4.new_output("stream", name="stderr", text=f"[{item['text']}]\n"))
        elif kind == "truncated":
            where = f"; the whole output is in file {item['file']}" if item["file"] else ""
            outputs.append(
                nbformat.v4.new_output(
                    "stream",
                    name="stderr",
                    text=f"\n[... {item['omitted_chars']} characters cut{where} ...]\n",
                )
            )
    return outputs


def _mime_bundle(item: dict[str, Any], store: OutputStore) -> dict[str, Any]:
    data: dict[str, Any] = {"text/plain": item["text"] or ""}
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
        if stored.mime_type in _BINARY_MIME_TYPES:
            data[stored.mime_type] = base64.b64encode(raw).decode("ascii")
        else:
            data[stored.mime_type] = raw.decode("utf-8", errors="replace")
    return data


class Transcript:
    """The transcript notebook of one session, appended to in the background, in call order."""

    def __init__(
        self,
        contents_manager: Any,
        path: str,
        kernelspec: dict[str, str],
        store: OutputStore,
        log: logging.Logger,
        write_interval: float = 0.0,
    ) -> None:
        """Write to ``path`` (an API path of ``contents_manager``).

        A queued cell is written at most ``write_interval`` seconds after its call ended,
        together with the cells of the calls that came meanwhile.
        """
        self.contents_manager = contents_manager
        self.path = path
        self.kernelspec = kernelspec
        self.store = store
        self.log = log
        self.write_interval = write_interval
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._write_now = asyncio.Event()
        # The notebook as last written, and the file's modification time then: while the file
        # is unchanged, appending needs no re-reading (parsing, validating and checking the
        # signature of the whole notebook cost more than the rest of a write).
        self._written: Any = None
        self._written_at: Any = None

    def start(self) -> None:
        """Write the empty notebook in the background; cells queued meanwhile follow it.

        Off the session's start: saving a notebook costs tens of milliseconds (an empty one
        is signed as trusted, which writes to the notary's database).
        """
        self._writer = asyncio.ensure_future(self._create_and_write())

    async def _create_and_write(self) -> None:
        try:
            await self._save(self._new_notebook())
        except Exception:
            self.log.exception("Could not create the transcript %s", self.path)
        await self._write_pending()

    def append(self, code: str, result: dict[str, Any]) -> None:
        """Queue one call as a code cell; the write happens in the background."""
        self._pending.append((code, result))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_pending())

    async def flush(self) -> None:
        """Write every queued cell now and wait until it is in the file."""
        self._write_now.set()
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def _write_pending(self) -> None:
        # Cells that arrive while this task waits or writes are taken by the next round of
        # this loop, so a burst of calls costs few writes and no cell is lost or reordered.
        while self._pending:
            if self.write_interval > 0 and not self._write_now.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._write_now.wait(), self.write_interval)
            calls, self._pending = self._pending, []
            try:
                notebook = await self._load()
                notebook.cells.extend(self._cell(code, result) for code, result in calls)
                await self._save(notebook)
            except Exception:
                self._written = None  # read the file afresh next time
                self.log.exception("Could not append to the transcript %s", self.path)

    def _cell(self, code: str, result: dict[str, Any]) -> Any:
        cell = nbformat.v4.new_code_cell(
            source=code,
            execution_count=result["execution_count"],
            outputs=notebook_outputs(result, self.store),
        )
        cell.metadata["agent_session"] = {"status": result["status"]}
        return cell

    async def _load(self) -> Any:
        """The notebook as it is on disk (a person may have edited it), or a new one."""
        if not await ensure_async(self.contents_manager.file_exists(self.path)):
            return self._new_notebook()
        if self._written is not None:
            model = await ensure_async(self.contents_manager.get(self.path, content=False))
            if model["last_modified"] == self._written_at:
                return self._written
        model = await ensure_async(self.contents_manager.get(self.path, content=True))
        return nbformat.from_dict(model["content"])

    def _new_notebook(self) -> Any:
        notebook = nbformat.v4.new_notebook()
        notebook.metadata["kernelspec"] = self.kernelspec
        notebook.metadata["language_info"] = {"name": self.kernelspec.get("language", "")}
        return notebook

    async def _save(self, notebook: Any) -> None:
        nbformat.validate(notebook)
        model = {"type": "notebook", "format": "json", "content": notebook}
        saved = await ensure_async(self.contents_manager.save(model, self.path))
        self._written, self._written_at = notebook, saved["last_modified"]
