"""A session's working folder as the API serves it: files in and out, confined to the folder.

Every path a request names is relative to the session's working folder. ``..``, absolute
paths, NUL bytes and symlinks that resolve outside the folder are refused before anything is
opened, and the last step of every open refuses a symlink swapped in after the check (the
kernel runs as the server's user and can change the folder at any time). Uploads are streamed
into a temporary file beside their target and renamed over it when complete, so a reader sees
the old file or the new one, never half of one, and an upload that fails leaves nothing.
"""

from __future__ import annotations

import mimetypes
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tornado import web

# Files are opened as the output store opens its own: never through a symlink, never
# blocking on a FIFO, and a new file is always a new inode of ours.
from .store import _CREATE_FLAGS, _READ_FLAGS

#: Prefix of uploads in progress; the folder's listing and change tracking skip them.
UPLOAD_PREFIX = ".jupyter-exec-upload-"


def _isoformat(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def entry_model(relative: str, status: os.stat_result) -> dict[str, Any]:
    """The listing model of one entry (``status`` from lstat: a symlink is a symlink)."""
    if stat.S_ISDIR(status.st_mode):
        kind = "directory"
    elif stat.S_ISREG(status.st_mode):
        kind = "file"
    elif stat.S_ISLNK(status.st_mode):
        kind = "symlink"
    else:
        kind = "other"
    return {
        "name": PurePosixPath(relative).name,
        "path": relative,
        "type": kind,
        "size": status.st_size,
        "modified": _isoformat(status.st_mtime),
    }


@dataclass(frozen=True)
class OpenedFile:
    """A workspace file open for reading, with what its answer's headers need."""

    handle: BinaryIO
    size: int
    mime_type: str


class Upload:
    """One file being uploaded: bytes go to a temporary file, :meth:`commit` puts it in place."""

    def __init__(self, target: Path, relative: str, max_bytes: int) -> None:
        """Stream into a new temporary file beside ``target`` (its parents already exist)."""
        self.target = target
        self.relative = relative
        self.max_bytes = max_bytes
        self.size = 0
        self.too_large = False
        self.temporary = target.with_name(f"{UPLOAD_PREFIX}{secrets.token_hex(8)}.tmp")
        self._file: BinaryIO | None = open(  # noqa: SIM115 - closed by commit/discard
            os.open(self.temporary, _CREATE_FLAGS, 0o644), "wb"
        )

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; past ``max_bytes`` the file is dropped and later chunks ignored."""
        if self._file is None:
            return
        self.size += len(chunk)
        if self.max_bytes and self.size > self.max_bytes:
            self.too_large = True
            self.discard()
            return
        self._file.write(chunk)

    def commit(self) -> bool:
        """Rename the complete file over the target; return whether the target was new."""
        assert self._file is not None
        self._file.close()
        self._file = None
        # A symlink at the target is replaced, not followed: rename works on the name.
        created = not os.path.lexists(self.target)
        try:
            os.replace(self.temporary, self.target)
        except OSError as e:
            self.temporary.unlink(missing_ok=True)
            raise web.HTTPError(409, f"Cannot write {self.relative}: {e.strerror}") from e
        return created

    def discard(self) -> None:
        """Close and remove the temporary file (an upload refused or broken off)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temporary.unlink(missing_ok=True)


class Workspace:
    """The working folder of one session, addressed by relative paths."""

    def __init__(self, root: Path, session_name: str) -> None:
        """Serve the folder ``root`` (it exists) of the session ``session_name``."""
        self.root = root
        self.session_name = session_name

    def _resolve(self, path: str) -> tuple[Path, str]:
        """The real path of ``path`` inside the folder and its normal relative form, or a 4xx.

        Symlinks are resolved, so one that points inside the folder works and one that leads
        out is refused before anything is read or written there.
        """
        if "\x00" in path or "\\" in path:
            raise web.HTTPError(400, f"Invalid path {path!r}: NUL and '\\' are not allowed")
        if path.startswith("/"):
            raise web.HTTPError(
                400, f"Invalid path {path!r}: paths are relative to the session's working folder"
            )
        parts = [part for part in path.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise web.HTTPError(400, f"Invalid path {path!r}: '..' is not allowed")
        root = self.root.resolve()
        resolved = Path(os.path.realpath(root.joinpath(*parts)))
        if resolved != root and not resolved.is_relative_to(root):
            # 400, not 403: a 403 means the credentials or the authorizer said no.
            raise web.HTTPError(
                400, f"Invalid path {path!r}: it leads out of the session's working folder"
            )
        return resolved, "/".join(parts)

    def _not_found(self, relative: str) -> web.HTTPError:
        return web.HTTPError(
            404, f"No file or folder {relative!r} in the workspace of session {self.session_name}"
        )

    def stat(self, path: str) -> tuple[Path, str, os.stat_result]:
        """The real path, the relative path and the status of an existing entry, or a 404."""
        resolved, relative = self._resolve(path)
        try:
            return resolved, relative, resolved.lstat()
        except FileNotFoundError as e:
            raise self._not_found(relative) from e
        except OSError as e:  # not a folder on the way (ENOTDIR), or too long
            raise web.HTTPError(400, f"Invalid path {relative!r}: {e.strerror}") from e

    def listing(self, resolved: Path, relative: str, max_entries: int) -> dict[str, Any]:
        """The entries of a folder, sorted by name, at most ``max_entries`` (0: all)."""
        entries: list[dict[str, Any]] = []
        truncated = False
        with os.scandir(resolved) as scan:
            for entry in scan:
                if entry.name.startswith(UPLOAD_PREFIX):
                    continue
                if max_entries and len(entries) >= max_entries:
                    truncated = True
                    break
                try:
                    status = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while we looked
                child = f"{relative}/{entry.name}" if relative else entry.name
                entries.append(entry_model(child, status))
        entries.sort(key=lambda model: model["name"])
        return {"path": relative, "type": "directory", "entries": entries, "truncated": truncated}

    def read(self, path: str, max_entries: int) -> dict[str, Any] | OpenedFile:
        """A folder's listing (at most ``max_entries`` entries), or a file opened to send."""
        resolved, relative, status = self.stat(path)
        if stat.S_ISDIR(status.st_mode):
            return self.listing(resolved, relative, max_entries)
        return self.open_file(resolved, relative)

    def open_file(self, resolved: Path, relative: str) -> OpenedFile:
        """An open regular file, its size and its media type; a 4xx when it is not one."""
        try:
            descriptor = os.open(resolved, _READ_FLAGS)
        except FileNotFoundError as e:
            raise self._not_found(relative) from e
        except OSError as e:  # a symlink swapped in since the check (ELOOP)
            raise web.HTTPError(400, f"Cannot read {relative!r}: {e.strerror}") from e
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            os.close(descriptor)
            raise web.HTTPError(400, f"{relative!r} is not a regular file")
        mime_type = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
        return OpenedFile(open(descriptor, "rb"), status.st_size, mime_type)

    def start_upload(self, path: str, max_bytes: int) -> Upload:
        """An :class:`Upload` into ``path``, its parent folders created; a 4xx for bad paths."""
        resolved, relative = self._resolve(path)
        if not relative or path.endswith("/"):
            raise web.HTTPError(400, f"Invalid path {path!r}: an upload needs a file name")
        if resolved.is_dir():
            raise web.HTTPError(409, f"{relative!r} is a folder")
        try:
            resolved.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise web.HTTPError(409, f"Cannot create {relative!r}: a parent is a file") from e
        # The folders made may have raced a symlink in: check where the parent is now.
        self._resolve(str(PurePosixPath(relative).parent))
        try:
            return Upload(resolved, relative, max_bytes)
        except OSError as e:
            raise web.HTTPError(409, f"Cannot write {relative!r}: {e.strerror}") from e

    def delete(self, path: str) -> None:
        """Delete a file, or a folder with everything in it; never the working folder itself."""
        resolved, relative, status = self.stat(path)
        if not relative:
            raise web.HTTPError(400, "The working folder itself cannot be deleted")
        if stat.S_ISDIR(status.st_mode):
            # rmtree removes symlinks inside as links: nothing they point to is touched.
            shutil.rmtree(resolved)
        else:
            resolved.unlink()
