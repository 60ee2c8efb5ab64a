"""Files in and out of a plain Jupyter server through its Contents API (flows, as in ``_api``).

On a server without the agent-session API the executor's kernel starts in the server's root
folder, which is also the root of ``api/contents``: the same relative paths name the same
files. The Contents API moves whole files as base64 in JSON, so a file is held in memory on
both sides; the extension's workspace API streams them instead. Jupyter Kernel Gateway has
no Contents API: calls raise :class:`WorkspaceUnavailableError`.
"""

from __future__ import annotations

import base64
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from ._api import (
    KERNEL_START_READ_TIMEOUT,
    Flow,
    JupyterRestAPI,
    Request,
    _json_object,
)
from .errors import (
    WorkspaceFileNotFoundError,
    WorkspacePathError,
    WorkspaceUnavailableError,
)

CONTENTS_PATH = "api/contents"


class ContentsAPI(JupyterRestAPI):
    """The workspace calls, over a plain server's Contents API."""

    _available: bool | None = None

    def upload(self, local_path: Path, remote_path: str) -> Flow[dict[str, Any]]:
        """Write a local file to ``remote_path`` (its folders created); return its entry."""
        yield from self._check_available()
        parent = PurePosixPath(remote_path.strip("/")).parent
        for folder in [*reversed(parent.parents), parent]:
            if str(folder) != ".":
                yield from self._make_folder(str(folder))
        content = base64.b64encode(local_path.read_bytes()).decode("ascii")
        body = {"type": "file", "format": "base64", "content": content}
        request = Request(
            "PUT", _contents_path(remote_path), body, read_timeout=KERNEL_START_READ_TIMEOUT
        )
        return _entry(_json_object((yield from self._workspace_answer(request))))

    def download(self, remote_path: str, local_path: Path) -> Flow[None]:
        """Write the file at ``remote_path`` into ``local_path`` (a new file)."""
        yield from self._check_available()
        request = Request(
            "GET",
            _contents_path(remote_path) + "?type=file&format=base64&content=1",
            read_timeout=KERNEL_START_READ_TIMEOUT,
        )
        model = _json_object((yield from self._workspace_answer(request)))
        content = model.get("content")
        if not isinstance(content, str):
            raise self._malformed(request, model)
        with local_path.open("xb") as file:
            file.write(base64.b64decode(content))

    def list_files(self, path: str) -> Flow[dict[str, Any]]:
        """The listing of a folder, shaped as the workspace API answers it."""
        yield from self._check_available()
        request = Request("GET", _contents_path(path) + "?content=1")
        model = _json_object((yield from self._workspace_answer(request)))
        if model.get("type") != "directory":
            raise WorkspacePathError(
                400,
                f"{path!r} is a file, not a folder",
                method=request.method,
                url=self.connection_info.url(request.path),
            )
        entries = sorted((_entry(item) for item in model.get("content") or []), key=_name)
        return {"path": path.strip("/"), "type": "directory", "entries": entries,
                "truncated": False}

    def delete(self, path: str) -> Flow[None]:
        """Delete a file or folder."""
        yield from self._check_available()
        yield from self._workspace_answer(Request("DELETE", _contents_path(path)))

    def _make_folder(self, path: str) -> Flow[None]:
        request = Request("GET", _contents_path(path) + "?content=0")
        response = yield request
        if response.status == 404:
            yield from self._workspace_answer(Request("PUT", _contents_path(path), {"type": "directory"}))
        else:
            yield from self._workspace_answer(request, response)

    def _check_available(self) -> Flow[None]:
        """Raise WorkspaceUnavailableError when the server has no Contents API."""
        if self._available is None:
            request = Request("GET", CONTENTS_PATH + "?content=0")
            response = yield request
            if response.status == 404:
                self._available = False
            else:
                yield from self._checked(request, response)
                self._available = True
        if not self._available:
            raise WorkspaceUnavailableError(
                f"The server at {self.connection_info.base_url} has neither the agent-session "
                "API nor a Contents API (Jupyter Kernel Gateway has none), so files cannot be "
                "moved in or out: install jupyter-exec-ext into the server's environment."
            )

    def _not_found(self, request: Request, message: str) -> Flow[None]:
        raise WorkspaceFileNotFoundError(
            404, message, method=request.method, url=self.connection_info.url(request.path)
        )
        yield  # pragma: no cover - a generator, as the flows it is part of


def _contents_path(path: str) -> str:
    path = path.strip("/")
    return f"{CONTENTS_PATH}/{quote(path, safe='/')}" if path else CONTENTS_PATH


def _entry(model: dict[str, Any]) -> dict[str, Any]:
    """A Contents API model as a workspace entry."""
    return {
        "name": str(model.get("name", "")),
        "path": str(model.get("path", "")),
        "type": "directory" if model.get("type") == "directory" else "file",
        "size": int(model.get("size") or 0),
        "modified": str(model.get("last_modified", "")),
    }


def _name(entry: dict[str, Any]) -> str:
    return str(entry["name"])
