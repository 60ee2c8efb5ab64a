"""Transcript cells written through the live document of a notebook open in JupyterLab.

With jupyter-collaboration, a notebook open in a browser tab is a room on the server: a
shared document that every tab edits and that the room saves to disk a moment after each
change. Writing the file under an open room makes the room reload it (a second later, and a
stale file loses what the room had not saved yet), so while a room is open the transcript is
written through its document instead: a call's cell appears when the call starts, its
outputs grow as the kernel prints, and it is completed when the call ends. No room is ever
created from here: a room without a browser tab would never be cleaned up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from traitlets import Bool, Float, Integer
from traitlets.config import LoggingConfigurable

#: The origin of our transactions on a live document (other observers can tell them apart).
ORIGIN = "jupyter_exec"


class TranscriptCall:
    """One call as its transcript follows it: its cell, the outputs not written yet, its end."""

    def __init__(self, code: str) -> None:
        """A call of ``code`` that has started (its result comes later)."""
        self.cell_id = uuid.uuid4().hex
        self.code = code
        #: Output events (of :mod:`jupyter_exec_ext.capture`) not yet in the live cell.
        self.events: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        #: Whether its cell was put in a live document (so the file may hold it already).
        self.went_live = False
        #: Characters of output shown live so far.
        self.live_chars = 0
        self.cut_note_shown = False


class LiveNotebooks(LoggingConfigurable):
    """Finds the open room of a transcript and writes its calls' cells there."""

    enabled = Bool(
        True,
        config=True,
        help="Write transcripts through the live document of a room when the notebook is open "
        "in JupyterLab with jupyter-collaboration, so every open tab shows each call as it runs. "
        "False (or jupyter-collaboration's disable_rtc) writes the file only, as without "
        "collaboration.",
    )

    output_interval = Float(
        0.05,
        config=True,
        help="Seconds the output a running call prints gathers before it is written to the "
        "live document, so a call printing many small chunks costs one update per interval. "
        "0 writes every chunk at once.",
    )

    max_live_chars = Integer(
        100_000,
        config=True,
        help="Characters of a running call's output shown live in its cell; past them the cell "
        "shows a note until the call ends, when it gets the result's outputs (cut to "
        "max_output_chars like the result). 0 means no limit.",
    )

    switch_margin = Float(
        0.5,
        config=True,
        help="Seconds added to jupyter-collaboration's file_poll_interval (after a write of the "
        "file) and document_save_delay (after a write of a live document) before the other "
        "writer may write: a room then never reloads a file older than its own changes.",
    )

    def __init__(self, serverapp: Any, **kwargs: Any) -> None:
        """Look for jupyter-collaboration among the extensions of ``serverapp``."""
        super().__init__(**kwargs)
        self.serverapp = serverapp
        self._extension: Any = None
        self._looked = False
        # Transcript path -> the id of its room, found once.
        self._room_ids: dict[str, str | None] = {}

    @property
    def extension(self) -> Any:
        """jupyter-collaboration's server extension, or None (absent, disabled, or off here).

        Looked up on first use: extensions load in name order, after this one's settings.
        """
        if not self._looked:
            self._looked = True
            manager = getattr(self.serverapp, "extension_manager", None)
            apps = manager.extension_apps.get("jupyter_server_ydoc", set()) if manager else set()
            extension = next(iter(apps), None)
            if extension is not None and not getattr(extension, "disable_rtc", False):
                self._extension = extension
        return self._extension if self.enabled else None

    @property
    def available(self) -> bool:
        """Whether transcripts can be written live (jupyter-collaboration runs here)."""
        return self.extension is not None

    @property
    def file_holdoff(self) -> float:
        """Seconds after a write of the file before a live document may be written."""
        extension = self.extension
        poll = getattr(extension, "file_poll_interval", 1.0) if extension else 0.0
        return float(poll or 0.0) + self.switch_margin

    @property
    def live_holdoff(self) -> float:
        """Seconds after a write of a live document before the file may be written."""
        extension = self.extension
        delay = getattr(extension, "document_save_delay", 1.0) if extension else 0.0
        return float(delay or 0.0) + self.switch_margin

    async def document(self, path: str) -> Any | None:
        """The live notebook of the open room of ``path``; None when no room is open or
        it is still loading the file. Never creates a room."""
        extension = self.extension
        if extension is None:
            return None
        rooms = getattr(getattr(extension, "ywebsocket_server", None), "rooms", None)
        room_id = self._room_ids.get(path)
        if room_id is not None and isinstance(rooms, dict):
            # Asked at every call's start and end: a dict lookup, where get_document would
            # ask the file id manager (a stat and SQLite) every time.
            room = rooms.get(room_id)
            if room is None or not getattr(room, "ready", True):
                return None
            document = getattr(room, "_document", None)
            if document is not None:
                return document
        try:
            document = await extension.get_document(
                path=path, content_type="notebook", file_format="json", copy=False
            )
            self._room_ids[path] = self._room_id(path)
        except Exception:
            self.log.debug("No live document for %s", path, exc_info=True)
            return None
        if document is None:
            return None
        room = self._room(document)
        if room is not None and not getattr(room, "ready", True):
            return None
        return document

    def _room_id(self, path: str) -> str | None:
        """The id of the room of the notebook at ``path`` (as jupyter-collaboration makes it)."""
        try:
            # Imported here: jupyter-collaboration is optional.
            from jupyter_server_ydoc.utils import (  # noqa: PLC0415
                encode_file_path,
                room_id_from_encoded_path,
            )
        except ImportError:
            return None
        file_id = self.serverapp.web_app.settings["file_id_manager"].index(path)
        return str(room_id_from_encoded_path(encode_file_path("json", "notebook", file_id)))

    def _room(self, document: Any) -> Any | None:
        server = getattr(self.extension, "ywebsocket_server", None)
        for room in list(getattr(server, "rooms", {}).values()):
            if getattr(room, "_document", None) is document:
                return room
        return None

    async def save_if_unwatched(self, document: Any, *, force: bool = False) -> None:
        """Have the room save now if no tab is connected (or ``force``), and wait for it.

        A room without clients is stopped after its cleanup delay, and a stopping room
        cancels its pending save: saving at once keeps the file on disk complete.
        """
        room = self._room(document)
        if room is None or (getattr(room, "clients", None) and not force):
            return
        save = getattr(room, "_save_to_disc", None)
        task = save() if save is not None else None
        if task is not None:
            # asyncio.wait: a later change may cancel this save for a newer one, which is
            # not our cancellation.
            await asyncio.wait({task})

    # -- writing cells -------------------------------------------------------------------

    def write(
        self,
        document: Any,
        call: TranscriptCall,
        cell: dict[str, Any] | None,
        to_outputs: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    ) -> None:
        """Bring the call's cell in ``document`` up to date, in one transaction.

        ``cell`` is the finished cell (None while the call runs); ``to_outputs`` turns
        the output events printed meanwhile into notebook outputs. The cell is found by its
        id wherever a person moved it, and appended at the end when it is not there: cells
        a person added stay where they are.
        """
        with document.ydoc.transaction(origin=ORIGIN):
            ycell = self._find(document, call.cell_id)
            if ycell is None:
                document.append_cell(cell or self._running_cell(call))
                call.went_live = True
                ycell = document.ycells[len(document.ycells) - 1]
                if cell is not None:
                    call.events.clear()
                    return
                ycell["execution_state"] = "running"
            if cell is not None:
                _replace_outputs(ycell, cell["outputs"])
                ycell["execution_count"] = cell["execution_count"]
                ycell["metadata"]["agent_session"] = cell["metadata"]["agent_session"]
                ycell["execution_state"] = "idle"
                call.events.clear()
                return
            self._add_events(ycell, call, to_outputs)

    def _add_events(
        self,
        ycell: Any,
        call: TranscriptCall,
        to_outputs: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    ) -> None:
        events, call.events = call.events, []
        youtputs = ycell["outputs"]
        for event in events:
            if call.cut_note_shown:
                return
            size = len(event.get("text") or "")
            if self.max_live_chars and call.live_chars + size > self.max_live_chars:
                youtputs.append(
                    _youtput(_note("[... more output; all of it shows when the call ends ...]"))
                )
                call.cut_note_shown = True
                return
            call.live_chars += size
            for output in to_outputs([event]):
                last = youtputs[len(youtputs) - 1] if len(youtputs) else None
                if (
                    output["output_type"] == "stream"
                    and last is not None
                    and last.get("output_type") == "stream"
                    and last.get("name") == output["name"]
                ):
                    text = last["text"]
                    text.insert(len(text), output["text"])
                else:
                    youtputs.append(_youtput(output))

    @staticmethod
    def _find(document: Any, cell_id: str) -> Any | None:
        # From the end: the call's cell is the last or near it, unless a person moved it.
        ycells = document.ycells
        for index in range(len(ycells) - 1, -1, -1):
            if ycells[index].get("id") == cell_id:
                return ycells[index]
        return None

    @staticmethod
    def _running_cell(call: TranscriptCall) -> dict[str, Any]:
        return {
            "cell_type": "code",
            "id": call.cell_id,
            "execution_count": None,
            "metadata": {"agent_session": {"status": "running"}},
            "outputs": [],
            "source": call.code,
        }


def _note(text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": "stderr", "text": text + "\n"}


def _youtput(output: dict[str, Any]) -> Any:
    """An output as a shared map, its stream text a shared text (as jupyter_ydoc builds it)."""
    # Imported here: pycrdt comes with jupyter-collaboration, which is optional.
    from pycrdt import Map, Text  # noqa: PLC0415

    output = dict(output)
    if output["output_type"] == "stream":
        text = output["text"]
        output["text"] = Text(text if isinstance(text, str) else "".join(text))
    return Map(output)


def _replace_outputs(ycell: Any, outputs: list[dict[str, Any]]) -> None:
    youtputs = ycell["outputs"]
    youtputs.clear()
    youtputs.extend([_youtput(output) for output in outputs])
