"""Turn a kernel's IOPub messages for one execution into the API's execution result.

The capture keeps the order in which things happened, strips ANSI codes, saves rich data
(images, HTML) to the session's :class:`~jupyter_exec_ext.store.OutputStore`, and keeps its
memory bounded: past ``max_chars`` it holds only the head and the tail of the text, while the
whole text is streamed to a file so nothing is lost.

Every text an item carries follows that rule, in ``output`` and in ``outputs`` alike: an item
in ``outputs`` holds exactly the part of its text that ``output`` shows. An error's value,
which ``output`` shows only inside the traceback, is cut to its own head and tail. Long texts
arrive in pieces (the kernel helper sends them so, see :data:`kernel_helper.PIECE_CHARS`), so
no text is ever held whole.

A listener (streamed and background executions) is told of each item as it happens: each
printed chunk as it comes, a result, display or error once its text is complete, with the
text cut to the same head and tail as the error's value.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernel_helper import CONTINUED_KEY, TEXT_PIECE_MSG_TYPE

from . import mime
from .store import OutputStore, StoredFile, StoreFullError, TextWriter

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")

#: The field of an item's model that a continued field of a kernel message fills.
_FIELD_OF_CONTINUED = {"text/plain": "text", "traceback": "traceback", "evalue": "evalue"}


def strip_ansi(text: str) -> str:
    """Remove ANSI colour and cursor codes: a person reading plain text does not see them."""
    return _ANSI_ESCAPE.sub("", text)


class Clip:
    """The head and the tail of a text that may arrive in pieces: at most ``limit`` characters
    of it are held (0: all), and :meth:`text` marks what was cut between them."""

    def __init__(self, limit: int) -> None:
        """Keep ``limit // 2`` characters of head and the rest of ``limit`` as tail."""
        self.limit = limit
        self._head = ""
        self._tail = ""
        self.total = 0

    def add(self, text: str) -> None:
        """Append a piece of the text."""
        self.total += len(text)
        if not self.limit:
            self._head += text
            return
        room = self.limit // 2 - len(self._head)
        if room > 0:
            self._head += text[:room]
            text = text[room:]
        if text:
            self._tail = (self._tail + text)[-(self.limit - self.limit // 2) :]

    def text(self) -> str:
        """The text, or its head and tail around a marker saying how much was cut."""
        omitted = self.total - len(self._head) - len(self._tail)
        if omitted <= 0:
            return self._head + self._tail
        return f"{self._head}\n[... {omitted} characters cut ...]\n{self._tail}"


@dataclass(eq=False)
class _Item:
    """One output item: its model without the text that flows through ``output``.

    That text is held by the item's parts (:class:`_Part`); the model of the item, as the
    result lists it, is made from the parts that were kept (:meth:`OutputCapture._models`).
    """

    model: dict[str, Any]
    #: Characters of field text the item got, kept or not: its model is marked truncated
    #: when its parts hold fewer.
    field_chars: int = 0
    #: Fields whose text is cut to their own head and tail (an error's value, and its
    #: traceback for ``result["error"]``), independent of what ``output`` keeps.
    clips: dict[str, Clip] = field(default_factory=dict)
    #: An error's ``result["error"]``, filled from its clips once its text is complete.
    summary: dict[str, Any] | None = None


@dataclass(eq=False)
class _Part:
    """A run of ``output`` text: part of field ``field`` of ``item``, or structure (None)."""

    item: _Item
    field: str | None
    text: str


@dataclass
class _Continued:
    """An item whose long texts follow in pieces (``TEXT_PIECE_MSG_TYPE`` messages)."""

    item: _Item
    #: Characters still to come, by field of the kernel's message.
    remaining: dict[str, int]
    #: Structure added to ``output`` once every field is complete.
    closing: str


class OutputCapture:
    """Collects the outputs of one execution, in order, with bounded memory."""

    def __init__(
        self,
        store: OutputStore | None,
        max_chars: int = 100_000,
        listener: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Save files to ``store``; keep at most ``max_chars`` of text (0: no limit).

        Without a store (internal calls whose output nobody downloads) rich data is not
        saved and text is not cut. ``listener``, when given, is called with each output
        event, numbered by ``seq`` from 1: a stream event carries only the newly printed
        text; a result, display or error comes once complete, its texts cut to ``max_chars``.
        """
        self.listener = listener
        self._seq = 0
        self.store = store
        self.max_chars = max_chars if store is not None else 0
        self.files: list[StoredFile] = []
        self._head: list[_Part] = []
        self._head_chars = 0
        self._tail: deque[_Part] = deque()
        self._tail_chars = 0
        self._omitted_chars = 0
        self._ends_with_newline = True
        self._full_text: TextWriter | None = None
        self._continued: _Continued | None = None
        #: ``{"ename", "evalue", "traceback"}`` of the code's exception (values cut to
        #: ``max_chars`` each); the session sets its own for timeouts and deaths.
        self.error: dict[str, Any] | None = None

    @property
    def truncated(self) -> bool:
        """Whether some text was cut from ``output``."""
        return self._full_text is not None

    def handle(
        self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any] | None = None
    ) -> None:
        """Record one IOPub message of the execution; other message types are ignored.

        ``metadata`` (the message's) names the fields whose whole text follows in pieces.
        """
        continued = (metadata or {}).get(CONTINUED_KEY) or {}
        if msg_type == "stream":
            self.add_stream(content.get("name", "stdout"), content.get("text", ""))
        elif msg_type in ("execute_result", "display_data", "update_display_data"):
            kind = "result" if msg_type == "execute_result" else "display"
            self.add_data(
                kind, content.get("data", {}), content.get("execution_count"), continued
            )
        elif msg_type == "error":
            self.add_error(
                content.get("ename", ""),
                content.get("evalue", ""),
                content.get("traceback", []),
                continued,
            )
        elif msg_type == TEXT_PIECE_MSG_TYPE:
            self.add_piece(str(content.get("field", "")), str(content.get("text", "")))

    def add_stream(self, name: str, text: str) -> None:
        """Record printed text exactly as printed (less ANSI codes)."""
        text = strip_ansi(text)
        if not text:
            return
        self._emit({"type": "stream", "name": name, "text": text})
        self._ends_with_newline = text.endswith("\n")
        parts = self._tail if self._full_text is not None else self._head
        last = parts[-1] if parts else None
        # Consecutive chunks of one stream become one item, as a notebook shows them.
        model = last.item.model if last is not None else {}
        if last is not None and model["type"] == "stream" and model["name"] == name:
            last.item.field_chars += len(text)
            self._grow(last, text)
            return
        item = _Item({"type": "stream", "name": name, "text": ""}, field_chars=len(text))
        self._add(_Part(item, "text", text))

    def add_data(
        self,
        kind: str,
        data: dict[str, Any],
        execution_count: int | None = None,
        continued: dict[str, int] | None = None,
    ) -> None:
        """Record a result or a display: its most readable text, and its other data as files.

        :mod:`~jupyter_exec_ext.mime` says which part of the bundle goes where.
        ``continued``: the fields of ``data`` whose whole text follows in pieces.
        """
        chosen = mime.choose(data)
        # Only text/plain comes in pieces: the pieces of a text that is not shown are dropped.
        shown = chosen.text_type == "text/plain"
        continued = _known_fields(continued, ("text/plain",)) if shown else {}
        model: dict[str, Any] = {
            "type": kind,
            "text": None if chosen.text is None else "",
            "mime_type": chosen.text_type,
        }
        if kind == "result":
            model["execution_count"] = execution_count
        model["mime_types"] = list(data)
        model["files"] = []
        markers = []
        for mime_type in chosen.file_types:
            stored, problem = self._save_data(mime_type, data[mime_type])
            if stored is not None:
                model["files"].append(stored.id)
                markers.append(f"[{mime_type}: {stored.id}]")
            elif problem is not None:
                markers.append(f"[{mime_type}: not kept, {problem}]")
        item = _Item(model)
        if self.listener is not None and chosen.text is not None:
            item.clips["text"] = Clip(self.max_chars)  # the event's text, head and tail
        closing = "".join(f"\n{marker}" for marker in markers) + "\n"
        if chosen.text is None and markers:
            closing = closing[1:]
        self._start_block(item)
        if chosen.text is not None and not continued:
            self._add_field(item, "text", chosen.text)
        self._close_or_continue(item, continued, closing)

    def add_error(
        self,
        ename: str,
        evalue: str,
        traceback: list[str],
        continued: dict[str, int] | None = None,
    ) -> None:
        """Record an exception the code raised, with its traceback free of ANSI codes.

        ``continued``: ``evalue`` and/or ``traceback`` when their whole text follows in pieces.
        """
        continued = _known_fields(continued, ("evalue", "traceback"))
        self.error = {"ename": ename, "evalue": "", "traceback": []}
        item = _Item(
            {"type": "error", "ename": ename, "evalue": "", "traceback": []},
            clips={"evalue": Clip(self.max_chars), "traceback": Clip(self.max_chars)},
            summary=self.error,
        )
        self._start_block(item)
        if "evalue" not in continued:
            self._add_field(item, "evalue", evalue)
        if "traceback" not in continued:
            text = "\n".join(traceback) if traceback else f"{ename}: {evalue}"
            self._add_field(item, "traceback", text)
        self._close_or_continue(item, continued, "\n")

    def add_piece(self, field_name: str, text: str) -> None:
        """Record a piece of a long text of the item before (a ``TEXT_PIECE_MSG_TYPE``)."""
        continued = self._continued
        if continued is None or field_name not in continued.remaining:
            return  # its item was closed: the kernel died between its pieces
        continued.remaining[field_name] -= len(text)
        self._add_field(continued.item, _FIELD_OF_CONTINUED[field_name], text)
        if all(left <= 0 for left in continued.remaining.values()):
            self._close_continued()

    def add_note(self, text: str) -> None:
        """Record a message from the server itself (a timeout, a kernel death)."""
        self._close_continued()
        item = _Item({"type": "note", "text": text})
        self._start_block(item)
        self._emit(dict(item.model))
        self._add(_Part(item, None, f"[{text}]\n"))
        self._ends_with_newline = True

    def result(self, status: str, execution_count: int | None) -> dict[str, Any]:
        """Build the execution result model; call once, when the execution is over."""
        self._close_continued()
        outputs = self._models(self._head)
        output = "".join(part.text for part in self._head)
        if self._full_text is not None and self.store is not None:
            writer = self._full_text
            stored = self.store.finish_text(writer)
            if stored is not None:
                self.files.append(stored)
            if writer.complete:
                assert stored is not None
                where = f"the whole output is in file {stored.id}"
            elif stored is not None:
                where = (
                    f"only its first {writer.chars} characters are in file {stored.id}: "
                    f"{self.store.limit_message()}"
                )
            else:
                where = f"the whole output was not kept: {self.store.limit_message()}"
            marker = f"\n[... {self._omitted_chars} characters cut; {where} ...]\n"
            outputs.append(
                {
                    "type": "truncated",
                    "omitted_chars": self._omitted_chars,
                    "file": stored.id if stored else None,
                    "file_complete": writer.complete,
                }
            )
            outputs.extend(self._models(self._tail))
            output += marker + "".join(part.text for part in self._tail)
        return {
            "status": status,
            "execution_count": execution_count,
            "output": output,
            "outputs": outputs,
            "error": self.error,
            "files": [self.store.model(stored) for stored in self.files] if self.store else [],
            "truncated": self.truncated,
        }

    @staticmethod
    def _models(parts: list[_Part] | deque[_Part]) -> list[dict[str, Any]]:
        """The models of the items of consecutive parts, each with the text its parts kept."""
        models: list[dict[str, Any]] = []
        groups: list[tuple[_Item, dict[str, list[str]]]] = []
        for part in parts:
            if not groups or groups[-1][0] is not part.item:
                groups.append((part.item, {}))
            if part.field is not None:
                groups[-1][1].setdefault(part.field, []).append(part.text)
        for item, texts in groups:
            model = dict(item.model)
            kept = 0
            # Notes and empty texts have no parts of a field: their model says it all.
            for name in ("text", "traceback") if item.field_chars else ():
                if name in model and model[name] is not None:
                    text = "".join(texts.get(name, ()))
                    kept += len(text)
                    model[name] = text
                    if name == "traceback":
                        model[name] = text.split("\n") if text else []
            if "evalue" in item.clips:
                model["evalue"] = item.clips["evalue"].text()
            if model["type"] != "stream" and kept < item.field_chars:
                model["truncated"] = True
            models.append(model)
        return models

    def _save_data(self, mime_type: str, value: Any) -> tuple[StoredFile | None, str | None]:
        """Save one type of a bundle as a file; else say why not (None: nobody asked)."""
        if self.store is None:
            return None, None
        try:
            stored = self.store.save(mime.payload(mime_type, value), mime_type)
        except mime.UnusableDataError as e:
            return None, str(e)
        except StoreFullError as e:
            return None, str(e)
        self.files.append(stored)
        return stored, None

    def _start_block(self, item: _Item) -> None:
        """Begin an item that stands on lines of its own in ``output``."""
        self._close_continued()
        if not self._ends_with_newline:
            self._add(_Part(item, None, "\n"))
        self._ends_with_newline = True

    def _add_field(self, item: _Item, name: str, text: str) -> None:
        """Add text of field ``name`` of ``item``: to ``output``, or to its clip only."""
        text = strip_ansi(text)
        clip = item.clips.get(name)
        if clip is not None:
            clip.add(text)
        if name == "evalue" or not text:
            return  # output shows an error's value inside its traceback
        item.field_chars += len(text)
        self._ends_with_newline = text.endswith("\n")
        parts = self._tail if self._full_text is not None else self._head
        last = parts[-1] if parts else None
        if last is not None and last.item is item and last.field == name:
            self._grow(last, text)
        else:
            self._add(_Part(item, name, text))

    def _close_or_continue(self, item: _Item, continued: dict[str, int], closing: str) -> None:
        self._continued = _Continued(item, dict(continued), closing)
        if not continued:
            self._close_continued()

    def _close_continued(self) -> None:
        """End the item waiting for pieces: its closing structure, its error summary."""
        continued, self._continued = self._continued, None
        if continued is None:
            return
        item = continued.item
        if item.summary is not None:
            summary = item.summary
            summary["evalue"] = item.clips["evalue"].text()
            summary["traceback"] = item.clips["traceback"].text().split("\n")
        if self.listener is not None:
            self._emit(_event(item))
        self._add(_Part(item, None, continued.closing))
        self._ends_with_newline = True

    def _emit(self, event: dict[str, Any]) -> None:
        """Tell the listener of an event, numbered by ``seq``."""
        if self.listener is not None:
            self._seq += 1
            self.listener({**event, "seq": self._seq})

    def _grow(self, last: _Part, text: str) -> None:
        """Append ``text`` to the last part, where the text goes now."""
        last.text += text
        if self._full_text is not None:
            self._full_text.write(text)
            self._tail_chars += len(text)
            self._trim_tail()
            return
        self._head_chars += len(text)
        if self.max_chars and self._head_chars > self.max_chars:
            self._start_truncating()

    def _add(self, part: _Part) -> None:
        if self._full_text is not None:
            self._full_text.write(part.text)
            self._tail.append(part)
            self._tail_chars += len(part.text)
            self._trim_tail()
            return
        self._head.append(part)
        self._head_chars += len(part.text)
        if self.max_chars and self._head_chars > self.max_chars:
            self._start_truncating()

    def _start_truncating(self) -> None:
        """Keep the first half of the budget as the head; the rest becomes the tail."""
        assert self.store is not None  # max_chars is 0 without a store
        writer = self.store.open_text()
        for part in self._head:
            writer.write(part.text)
        self._full_text = writer
        head_budget = self.max_chars // 2
        kept = 0
        moved: list[_Part] = []
        for index, part in enumerate(self._head):
            if kept + len(part.text) > head_budget:
                length = head_budget - kept
                rest = _Part(part.item, part.field, part.text[length:])
                part.text = part.text[:length]
                moved = [rest, *self._head[index + 1 :]]
                del self._head[index + 1 :]
                if not part.text:
                    self._head.pop()
                break
            kept += len(part.text)
        self._tail.extend(moved)
        self._tail_chars = sum(len(part.text) for part in moved)
        self._head_chars = head_budget
        self._trim_tail()

    def _trim_tail(self) -> None:
        tail_budget = self.max_chars - self.max_chars // 2
        while self._tail_chars > tail_budget:
            first = self._tail[0]
            excess = self._tail_chars - tail_budget
            if len(first.text) <= excess:
                self._tail.popleft()
                self._tail_chars -= len(first.text)
                self._omitted_chars += len(first.text)
            else:
                first.text = first.text[excess:]
                self._tail_chars -= excess
                self._omitted_chars += excess


def _known_fields(continued: dict[str, int] | None, fields: tuple[str, ...]) -> dict[str, int]:
    """The continued fields of a kernel message that this kind of item has, with lengths."""
    return {
        name: length
        for name, length in (continued or {}).items()
        if name in fields and isinstance(length, int) and length > 0
    }


def _event(item: _Item) -> dict[str, Any]:
    """The event of a complete result, display or error: its model, texts from its clips."""
    event = dict(item.model)
    for name, clip in item.clips.items():
        text = clip.text()
        event[name] = text.split("\n") if name == "traceback" else text
        if clip.limit and clip.total > clip.limit:
            event["truncated"] = True
    return event
