"""Turn a kernel's IOPub messages for one execution into the API's execution result.

The capture keeps the order in which things happened, strips ANSI codes, saves rich data
(images, HTML) to the session's :class:`~jupyter_exec_ext.store.OutputStore`, and keeps its
memory bounded: past ``max_chars`` it holds only the head and the tail of the text, while the
whole text is streamed to a file so nothing is lost.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from . import mime
from .store import OutputStore, StoredFile, StoreFullError

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")

def strip_ansi(text: str) -> str:
    """Remove ANSI colour and cursor codes: a person reading plain text does not see them."""
    return _ANSI_ESCAPE.sub("", text)


@dataclass
class _Part:
    """One output item and the text it adds to ``output``."""

    item: dict[str, Any]
    text: str

    def cut_to_head(self, length: int) -> _Part:
        """Keep the first ``length`` characters here and return the rest as a new part."""
        rest = _Part(dict(self.item), self.text[length:])
        self._set_text(self.text[:length])
        rest._set_text(rest.text)
        return rest

    def drop_head(self, length: int) -> None:
        """Forget the first ``length`` characters."""
        self._set_text(self.text[length:])

    def _set_text(self, text: str) -> None:
        # A stream's rendered text is its text; other items keep their structure and are
        # only marked, so an error stays an error even when its text is cut.
        self.text = text
        if self.item["type"] == "stream":
            self.item["text"] = text
        else:
            self.item["truncated"] = True


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
        item as it is added (a stream item carries only the newly printed text), numbered by
        ``seq`` from 1: the events of a streamed or background execution.
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
        self._full_text: tuple[str, IO[str]] | None = None
        self.error: dict[str, Any] | None = None

    @property
    def truncated(self) -> bool:
        """Whether some text was cut from ``output``."""
        return self._full_text is not None

    def handle(self, msg_type: str, content: dict[str, Any]) -> None:
        """Record one IOPub message of the execution; other message types are ignored."""
        if msg_type == "stream":
            self.add_stream(content.get("name", "stdout"), content.get("text", ""))
        elif msg_type in ("execute_result", "display_data", "update_display_data"):
            kind = "result" if msg_type == "execute_result" else "display"
            self.add_data(kind, content.get("data", {}), content.get("execution_count"))
        elif msg_type == "error":
            self.add_error(
                content.get("ename", ""), content.get("evalue", ""), content.get("traceback", [])
            )

    def add_stream(self, name: str, text: str) -> None:
        """Record printed text exactly as printed (less ANSI codes)."""
        self._add({"type": "stream", "name": name, "text": ""}, strip_ansi(text))

    def add_data(
        self, kind: str, data: dict[str, Any], execution_count: int | None = None
    ) -> None:
        """Record a result or a display: its most readable text, and its other data as files.

        :mod:`~jupyter_exec_ext.mime` says which part of the bundle goes where.
        """
        chosen = mime.choose(data)
        text = None if chosen.text is None else strip_ansi(chosen.text)
        item: dict[str, Any] = {"type": kind, "text": text, "mime_type": chosen.text_type}
        if kind == "result":
            item["execution_count"] = execution_count
        item["mime_types"] = list(data)
        item["files"] = []
        lines = [] if text is None else [text]
        for mime_type in chosen.file_types:
            stored, problem = self._save_data(mime_type, data[mime_type])
            if stored is not None:
                item["files"].append(stored.id)
                lines.append(f"[{mime_type}: {stored.id}]")
            elif problem is not None:
                lines.append(f"[{mime_type}: not kept, {problem}]")
        self._add_block(item, "\n".join(lines))

    def add_error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        """Record an exception the code raised, with its traceback free of ANSI codes."""
        lines = [strip_ansi(line) for line in traceback] or [f"{ename}: {evalue}"]
        self.error = {"ename": ename, "evalue": strip_ansi(evalue), "traceback": lines}
        self._add_block({"type": "error", **self.error}, "\n".join(lines))

    def add_note(self, text: str) -> None:
        """Record a message from the server itself (a timeout, a kernel death)."""
        self._add_block({"type": "note", "text": text}, f"[{text}]")

    def result(self, status: str, execution_count: int | None) -> dict[str, Any]:
        """Build the execution result model; call once, when the execution is over."""
        outputs = [part.item for part in self._head]
        output = "".join(part.text for part in self._head)
        if self._full_text is not None and self.store is not None:
            file_id, handle = self._full_text
            try:
                stored: StoredFile | None = self.store.finish_text(file_id, handle)
            except StoreFullError as e:
                stored, where = None, f"the whole output was not kept: {e}"
            else:
                assert stored is not None
                self.files.append(stored)
                where = f"the whole output is in file {stored.id}"
            marker = f"\n[... {self._omitted_chars} characters cut; {where} ...]\n"
            outputs.append(
                {
                    "type": "truncated",
                    "omitted_chars": self._omitted_chars,
                    "file": stored.id if stored else None,
                }
            )
            outputs.extend(part.item for part in self._tail)
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

    def _add_block(self, item: dict[str, Any], text: str) -> None:
        """Add an item that stands on lines of its own in ``output``."""
        prefix = "" if self._ends_with_newline else "\n"
        self._add(item, f"{prefix}{text}\n")

    def _add(self, item: dict[str, Any], text: str) -> None:
        if not text and item["type"] == "stream":
            return
        if self.listener is not None:
            self._seq += 1
            # A copy: the item itself is merged with later chunks and cut as text flows.
            event = {**item, "text": text} if item["type"] == "stream" else dict(item)
            self.listener({**event, "seq": self._seq})
        self._ends_with_newline = text.endswith("\n") if text else self._ends_with_newline
        if self._full_text is not None:
            self._full_text[1].write(text)
            self._append(self._tail, item, text)
            self._tail_chars += len(text)
            self._trim_tail()
            return
        self._append(self._head, item, text)
        self._head_chars += len(text)
        if self.max_chars and self._head_chars > self.max_chars:
            self._start_truncating()

    @staticmethod
    def _append(parts: list[_Part] | deque[_Part], item: dict[str, Any], text: str) -> None:
        # Consecutive chunks of one stream become one item, as a notebook shows them.
        last = parts[-1] if parts else None
        if (
            last is not None
            and item["type"] == "stream"
            and last.item["type"] == "stream"
            and last.item["name"] == item["name"]
        ):
            last.text += text
            last.item["text"] = last.text
            return
        if item["type"] == "stream":
            item["text"] = text
        parts.append(_Part(item, text))

    def _start_truncating(self) -> None:
        """Keep the first half of the budget as the head; the rest becomes the tail."""
        assert self.store is not None  # max_chars is 0 without a store
        file_id, handle = self.store.open_text()
        for part in self._head:
            handle.write(part.text)
        self._full_text = (file_id, handle)
        head_budget = self.max_chars // 2
        kept = 0
        moved: list[_Part] = []
        for index, part in enumerate(self._head):
            if kept + len(part.text) > head_budget:
                rest = part.cut_to_head(head_budget - kept)
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
                first.drop_head(excess)
                self._tail_chars -= excess
                self._omitted_chars += excess
