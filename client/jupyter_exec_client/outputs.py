"""Outputs as they arrive: what a run's callbacks are given, and who calls them.

A streamed run (``executor.run(code, on_stdout=...)``) or a followed background execution
hands each output event to an :class:`OutputDispatcher`, which saves a display's files
into the output folder first and then calls the matching callback with plain values:
printed text, a :class:`Display` (its files already on disk), a :class:`CodeError`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import APIError

__all__ = ["CodeError", "Display", "OutputCallbacks", "OutputDispatcher"]


@dataclass(frozen=True)
class Display:
    """A display or the value of the last expression, as it arrived.

    ``text`` is its most readable text (None when it has none) and ``mime_type`` the type
    that text came from; ``files`` are the paths of its other data, already saved in the
    executor's ``output_dir``; ``mime_types`` every type the output carried.
    """

    text: str | None
    mime_type: str | None
    mime_types: list[str]
    files: list[Path]
    #: Of a result: the execution count of the call (None for a display).
    execution_count: int | None = None


@dataclass(frozen=True)
class CodeError:
    """An exception the code raised: its name, value and traceback free of ANSI codes."""

    ename: str
    evalue: str
    traceback: list[str]


@dataclass(frozen=True)
class OutputCallbacks:
    """The functions a run calls as output arrives; each is optional.

    They run in the thread that drives the run (for the async executor, its event loop), so
    a slow callback slows the reading: the server keeps what is printed meanwhile.
    """

    on_stdout: Callable[[str], None] | None = None
    on_stderr: Callable[[str], None] | None = None
    on_display: Callable[[Display], None] | None = None
    on_result: Callable[[Display], None] | None = None
    on_error: Callable[[CodeError], None] | None = None
    #: Messages from the server itself (a timeout, a kernel death, text left out).
    on_note: Callable[[str], None] | None = None


#: Saves one file of the session by its id into the output folder; returns its path.
Downloader = Callable[[str], Generator[Any, Any, Path]]


@dataclass
class OutputDispatcher:
    """Hands a run's events to its callbacks, downloading a display's files first.

    ``saved`` maps the ids of the files saved so far to their paths, so that the result at
    the end names the same files instead of fetching them again.
    """

    callbacks: OutputCallbacks
    download: Downloader | None = None
    saved: dict[str, Path] = field(default_factory=dict)

    def handle(self, event: dict[str, Any]) -> Generator[Any, Any, None]:
        """A flow: save the event's files (when there is a downloader), then call back."""
        wanted = self.callbacks.on_display if event["type"] == "display" else None
        if event["type"] == "result":
            wanted = self.callbacks.on_result
        if wanted is not None and self.download is not None:
            for file_id in event.get("files") or []:
                if file_id in self.saved:
                    continue
                try:
                    self.saved[file_id] = yield from self.download(file_id)
                except APIError:
                    continue  # the result at the end names the file that could not be saved
        self.deliver(event)

    def handle_saved(self, event: dict[str, Any], paths: dict[str, Path]) -> None:
        """Call back for an event whose files are already written (at ``paths``)."""
        self.saved.update(paths)
        self.deliver(event)

    def deliver(self, event: dict[str, Any]) -> None:
        """Call the callback that matches the event, if it was given."""
        callbacks = self.callbacks
        kind = event["type"]
        if kind == "stream":
            callback = callbacks.on_stderr if event.get("name") == "stderr" else callbacks.on_stdout
            if callback is not None:
                callback(str(event.get("text", "")))
        elif kind in ("display", "result"):
            shown = callbacks.on_display if kind == "display" else callbacks.on_result
            if shown is not None:
                shown(self._display(event))
        elif kind == "error":
            if callbacks.on_error is not None:
                callbacks.on_error(
                    CodeError(
                        str(event.get("ename", "")),
                        str(event.get("evalue", "")),
                        [str(line) for line in event.get("traceback") or []],
                    )
                )
        elif kind == "note":
            if callbacks.on_note is not None:
                callbacks.on_note(str(event.get("text", "")))
        elif kind == "truncated" and callbacks.on_note is not None:
            callbacks.on_note(
                f"{event.get('omitted_chars', 0)} characters of output were left out here "
                "(they came faster than they were read; the result keeps the whole text)"
            )

    def _display(self, event: dict[str, Any]) -> Display:
        files = [self.saved[f] for f in event.get("files") or [] if f in self.saved]
        return Display(
            text=event.get("text"),
            mime_type=event.get("mime_type"),
            mime_types=list(event.get("mime_types") or []),
            files=files,
            execution_count=event.get("execution_count"),
        )
