"""What an executor does, shared by the sync and the async executor: flows, no I/O of its own.

The core owns one agent session and turns code blocks into an :class:`IPythonCodeResult`:
blocks run in order until one fails, rich outputs are downloaded into ``output_dir``, and
the server's file markers in the text become the paths of the saved files.
"""

from __future__ import annotations

import contextlib
import mimetypes
import uuid
from collections.abc import Iterable
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from ._api import AgentSessionsAPI, Flow
from .blocks import CodeBlockLike, IPythonCodeResult, code_for_kernel
from .connection import JupyterConnectionInfo
from .errors import APIError, ExecutorClosedError, SessionNotFoundError

#: File name extensions of the rich outputs the server captures.
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpeg",
    "image/svg+xml": ".svg",
    "text/html": ".html",
    "text/plain": ".txt",
}

State = Literal["new", "open", "closed"]


class ExecutorCore:
    """One agent session and the rules for running code blocks in it.

    States: ``new`` (no session yet), ``open`` (a session on the server), ``closed``
    (stopped; :meth:`start` opens it again with a fresh session).
    """

    def __init__(
        self,
        connection_info: JupyterConnectionInfo,
        kernel_name: str,
        timeout: float,
        output_dir: str | PathLike[str],
    ) -> None:
        """Check the arguments; nothing is sent before :meth:`start`."""
        if timeout < 1:
            raise ValueError(f"Timeout must be greater than or equal to 1 second, not {timeout}.")
        directory = Path(output_dir)
        if not directory.is_dir():
            raise ValueError(f"Output directory {str(directory)!r} does not exist.")
        self.api = AgentSessionsAPI(connection_info)
        self.kernel_name = kernel_name
        self.timeout = timeout
        # Resolved once: the paths handed out stay right if the process changes directory.
        self.output_dir = directory.resolve()
        self.session_id: str | None = None
        self.state: State = "new"

    @property
    def connection_info(self) -> JupyterConnectionInfo:
        """The server the session lives on."""
        return self.api.connection_info

    def start(self) -> Flow[None]:
        """Create the agent session (nothing to do when it is open)."""
        if self.state == "open":
            return
        model = yield from self.api.create_session(self.kernel_name)
        self.session_id = str(model["id"])
        self.state = "open"

    def stop(self) -> Flow[None]:
        """Delete the agent session; stopping twice is harmless."""
        session_id, self.session_id = self.session_id, None
        self.state = "closed"
        if session_id is None:
            return
        # A session already gone (culled, or the server restarted) is as good as deleted.
        with contextlib.suppress(SessionNotFoundError):
            yield from self.api.delete_session(session_id)

    def restart(self) -> Flow[None]:
        """Give the session a fresh kernel; a session the server lost is created anew."""
        session_id = self._open_session_id()
        try:
            yield from self.api.restart(session_id)
        except SessionNotFoundError:
            self.state = "new"
            yield from self.start()

    def interrupt(self) -> Flow[None]:
        """Interrupt the code the session is running."""
        yield from self.api.interrupt(self._open_session_id())

    def execute_code_blocks(self, code_blocks: Iterable[CodeBlockLike]) -> Flow[IPythonCodeResult]:
        """Run the blocks in order; stop at the first that fails, keeping earlier output."""
        if self.state == "new":
            yield from self.start()
        session_id = self._open_session_id()
        outputs: list[str] = []
        files: list[str] = []
        for block in code_blocks:
            code = code_for_kernel(block.code, block.language)
            if code is None:
                outputs.append(
                    f"Unsupported language {block.language!r}: this executor runs Python "
                    "blocks (python, py, ipython, or no language) and shell blocks (bash, sh, "
                    "shell). The block was not run."
                )
                return IPythonCodeResult(1, _join(outputs), files)
            result = yield from self.api.execute(session_id, code, self.timeout)
            output, saved = yield from self._save_files(result)
            outputs.append(output)
            files.extend(saved)
            if result.get("status") != "ok":
                return IPythonCodeResult(1, _join(outputs), files)
        return IPythonCodeResult(0, _join(outputs), files)

    def _open_session_id(self) -> str:
        if self.state == "closed" or self.session_id is None:
            raise ExecutorClosedError(
                "The executor was stopped and has no agent session: start() opens a new one."
            )
        return self.session_id

    def _save_files(self, result: dict[str, Any]) -> Flow[tuple[str, list[str]]]:
        """Download the result's files; name them in the text where the server marked them."""
        output = str(result.get("output", ""))
        saved: list[str] = []
        for file in result.get("files", []):
            mime_type = str(file["mime_type"])
            extension = _EXTENSIONS.get(mime_type) or mimetypes.guess_extension(mime_type) or ""
            path = self.output_dir / f"{uuid.uuid4().hex}{extension}"
            try:
                yield from self.api.download(str(file["url"]), path)
            except APIError as e:
                note = f"({mime_type} output {file['id']} could not be downloaded: {e.message})"
            else:
                saved.append(str(path))
                note = _saved_note(mime_type, path)
            output = _name_file(output, mime_type, str(file["id"]), note, path)
        return output, saved


def _saved_note(mime_type: str, path: Path) -> str:
    """The words AutoGen's executor uses for a saved output."""
    if mime_type.startswith("image/"):
        return f"Image data saved to {path}"
    if mime_type == "text/html":
        return f"HTML data saved to {path}"
    if mime_type == "text/plain":
        return f"Full output saved to {path}"
    return f"{mime_type} data saved to {path}"


def _name_file(output: str, mime_type: str, file_id: str, note: str, path: Path) -> str:
    """Put ``note`` where the server named the file in ``output``; else add it at the end."""
    marker = f"[{mime_type}: {file_id}]"
    if marker in output:
        return output.replace(marker, note)
    # The server's cut-output marker names the whole text as "... in file <id> ...".
    in_file = f"in file {file_id}"
    if in_file in output:
        return output.replace(in_file, f"saved to {path}")
    separator = "" if not output or output.endswith("\n") else "\n"
    return f"{output}{separator}{note}\n"


def _join(outputs: list[str]) -> str:
    """One text from the outputs of several blocks, a line break between two."""
    return "\n".join(text.rstrip("\n") for text in outputs if text.strip())
