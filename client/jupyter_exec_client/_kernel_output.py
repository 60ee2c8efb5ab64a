"""Turn a kernel's IOPub messages into an execution result, on the client's side.

Used with servers that have no agent-session API: it gives the result the server's
``execute`` call would give (text free of ANSI codes, in order; rich data as files; the
text cut past a limit, its head and tail kept), except that files are written straight
into the output folder from the messages' base64 data, and listed with their ``path``.
"""

from __future__ import annotations

import mimetypes
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import _mime

#: Characters of text a result keeps, as the server's default; the whole text goes to a file.
MAX_OUTPUT_CHARS = 100_000

#: File name extensions of the rich outputs kept as files.
FILE_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpeg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/svg+xml": ".svg",
    "text/html": ".html",
    "text/plain": ".txt",
    "application/pdf": ".pdf",
    "application/json": ".json",
    "application/javascript": ".js",
}

_ANSI_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]"
)


def strip_ansi(text: str) -> str:
    """Remove ANSI colour and cursor codes."""
    return _ANSI_ESCAPE.sub("", text)


def clip(text: str, limit: int) -> str:
    """The head and tail of ``text`` around a marker, as the server cuts an item's text.

    An item of ``outputs`` and the ``error`` follow ``max_chars`` as ``output`` does.
    """
    if not limit or len(text) <= limit:
        return text
    head = limit // 2
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[head - limit:]}"


def new_output_path(output_dir: Path, mime_type: str) -> Path:
    """A new file name in ``output_dir`` for an output of ``mime_type`` (AutoGen's naming)."""
    extension = FILE_EXTENSIONS.get(mime_type)
    if extension is None:
        json_type = mime_type.endswith("+json")
        extension = ".json" if json_type else mimetypes.guess_extension(mime_type) or ""
    return output_dir / f"{uuid.uuid4().hex}{extension}"


class OutputCollector:
    """Collects the outputs of one execution, in order; past ``max_chars`` keeps head and tail."""

    def __init__(
        self,
        output_dir: Path,
        max_chars: int = MAX_OUTPUT_CHARS,
        listener: Callable[[dict[str, Any], dict[str, Path]], None] | None = None,
    ) -> None:
        """Write files into ``output_dir``; keep at most ``max_chars`` of text (0: no limit).

        ``listener``, when given, is called with each output as it is added (a stream event
        carries only the new text), numbered by ``seq`` as the server numbers its events,
        and the paths its files were written to.
        """
        self.output_dir = output_dir
        self.listener = listener
        self._seq = 0
        self.max_chars = max_chars
        self.files: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self.error: dict[str, Any] | None = None
        self._head: list[str] = []
        self._head_chars = 0
        self._tail = ""
        self._omitted_chars = 0
        self._ends_with_newline = True
        self._full_text: tuple[dict[str, Any], IO[str]] | None = None

    def handle(self, msg_type: str, content: dict[str, Any]) -> None:
        """Record one IOPub message of the execution; other message types are ignored."""
        if msg_type == "stream":
            self.add_stream(str(content.get("name", "stdout")), str(content.get("text", "")))
        elif msg_type in ("execute_result", "display_data", "update_display_data"):
            kind = "result" if msg_type == "execute_result" else "display"
            self.add_data(kind, content.get("data") or {}, content.get("execution_count"))
        elif msg_type == "error":
            self.add_error(
                str(content.get("ename", "")),
                str(content.get("evalue", "")),
                [str(line) for line in content.get("traceback") or []],
            )

    def add_stream(self, name: str, text: str) -> None:
        """Record printed text exactly as printed (less ANSI codes)."""
        text = strip_ansi(text)
        if text:
            self._emit({"type": "stream", "name": name, "text": text})
        last = self.outputs[-1] if self.outputs else None
        if self._full_text is None:
            # Consecutive chunks of one stream make one item, as a notebook shows them.
            if last is not None and last["type"] == "stream" and last["name"] == name:
                last["text"] += text
            elif text:
                self.outputs.append({"type": "stream", "name": name, "text": text})
        self._add(text)

    def add_data(self, kind: str, data: dict[str, Any], execution_count: int | None = None) -> None:
        """Record a result or a display: its most readable text, its other data as files."""
        chosen = _mime.choose(data)
        text = None if chosen.text is None else strip_ansi(chosen.text)
        item: dict[str, Any] = {
            "type": kind,
            "text": None if text is None else self._clip(text),
            "mime_type": chosen.text_type,
        }
        if kind == "result":
            item["execution_count"] = execution_count
        item["mime_types"] = list(data)
        item["files"] = []
        if text is not None and item["text"] != text:
            item["truncated"] = True
        lines = [] if text is None else [text]
        for mime_type in chosen.file_types:
            try:
                saved = self._save_data(mime_type, data[mime_type])
            except _mime.UnusableDataError as e:
                lines.append(f"[{mime_type}: not kept, {e}]")
                continue
            item["files"].append(saved["id"])
            lines.append(f"[{mime_type}: {saved['id']}]")
        paths = {f["id"]: Path(f["path"]) for f in self.files if f["id"] in item["files"]}
        self._add_block(item, "\n".join(lines), paths)

    def add_error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        """Record an exception the code raised, its traceback as plain text."""
        lines = [strip_ansi(line) for line in traceback] or [f"{ename}: {evalue}"]
        text = "\n".join(lines)
        self.error = {
            "ename": ename,
            "evalue": self._clip(strip_ansi(evalue)),
            "traceback": self._clip(text).split("\n"),
        }
        item = {"type": "error", **self.error}
        if len(text) > len("\n".join(item["traceback"])):
            item["truncated"] = True
        self._add_block(item, text)

    def add_note(self, text: str) -> None:
        """Record a message from the client itself (a timeout, a kernel death)."""
        self._add_block({"type": "note", "text": text}, f"[{text}]")

    def result(self, status: str, execution_count: int | None) -> dict[str, Any]:
        """The execution result, shaped as the server's; call once, at the end."""
        output = "".join(self._head)
        if self._full_text is not None:
            file, handle = self._full_text
            handle.close()
            self._trim_tail()
            file["size"] = Path(file["path"]).stat().st_size
            self.files.append(file)
            output += (
                f"\n[... {self._omitted_chars} characters cut; the whole output is in file "
                f"{file['id']} ...]\n{self._tail}"
            )
            self.outputs.append(
                {"type": "truncated", "omitted_chars": self._omitted_chars, "file": file["id"]}
            )
        return {
            "status": status,
            "execution_count": execution_count,
            "output": output,
            "outputs": self.outputs,
            "error": self.error,
            "files": self.files,
            "truncated": self._full_text is not None,
        }

    def close(self) -> None:
        """Close the file of the whole text, for an execution that ends without a result."""
        if self._full_text is not None:
            self._full_text[1].close()

    def _clip(self, text: str) -> str:
        return clip(text, self.max_chars)

    def _save_data(self, mime_type: str, value: Any) -> dict[str, Any]:
        """Write one type of a bundle to a new file of the output folder."""
        payload = _mime.payload(mime_type, value)
        path = new_output_path(self.output_dir, mime_type)
        path.write_bytes(payload)
        saved = {
            "id": uuid.uuid4().hex,
            "mime_type": mime_type,
            "size": len(payload),
            "path": str(path),
        }
        self.files.append(saved)
        return saved

    def _emit(self, event: dict[str, Any], paths: dict[str, Path] | None = None) -> None:
        if self.listener is not None:
            self._seq += 1
            self.listener({**event, "seq": self._seq}, paths or {})

    def _add_block(
        self, item: dict[str, Any], text: str, paths: dict[str, Path] | None = None
    ) -> None:
        """Add an item that stands on lines of its own in the output."""
        self._emit(dict(item), paths)
        if self._full_text is None:
            self.outputs.append(item)
        prefix = "" if self._ends_with_newline else "\n"
        self._add(f"{prefix}{text}\n")

    def _add(self, text: str) -> None:
        if not text:
            return
        self._ends_with_newline = text.endswith("\n")
        if self._full_text is not None:
            self._full_text[1].write(text)
            self._tail += text
            # Trimmed in batches: slicing a long tail for every small chunk would be quadratic.
            if len(self._tail) > 2 * self.max_chars:
                self._trim_tail()
            return
        self._head.append(text)
        self._head_chars += len(text)
        if self.max_chars and self._head_chars > self.max_chars:
            self._start_truncating()

    def _start_truncating(self) -> None:
        """Keep the first half of the budget as the head; the whole text goes to a file."""
        whole = "".join(self._head)
        path = new_output_path(self.output_dir, "text/plain")
        handle = path.open("w", encoding="utf-8", newline="")
        handle.write(whole)
        file = {"id": uuid.uuid4().hex, "mime_type": "text/plain", "size": 0, "path": str(path)}
        self._full_text = (file, handle)
        head_budget = self.max_chars // 2
        self._head = [whole[:head_budget]]
        self._tail = whole[head_budget:]
        self._trim_tail()

    def _trim_tail(self) -> None:
        excess = len(self._tail) - (self.max_chars - self.max_chars // 2)
        if excess > 0:
            self._tail = self._tail[excess:]
            self._omitted_chars += excess
