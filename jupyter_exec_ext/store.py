"""Storage of the files a session's code showed: images, HTML and full texts of cut output."""

from __future__ import annotations

import mimetypes
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

#: File ids are url-safe tokens we make ourselves; anything else cannot name a stored file.
FILE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

#: Opening a stored file never follows a symlink in its place and never blocks on a FIFO put
#: there (both flags are 0 where the platform lacks them).
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_BINARY", 0)
)
#: A new file is always a new inode of ours: never written through a symlink or into a file
#: someone else put at that path first.
_CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
)

#: Suffixes make the files readable by a person who opens the store folder.
_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
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


class StoreFullError(Exception):
    """Keeping the file would take the session past its limit of stored bytes."""


class StoredFileChangedError(FileNotFoundError):
    """The file at a stored file's path is no longer the one the store wrote."""


@dataclass(frozen=True)
class StoredFile:
    """One captured output kept on disk.

    ``device`` and ``inode`` say which file the store wrote: the session's kernel runs as the
    same user and can replace what lies at ``path`` (with a symlink to ``/etc/passwd``, a hard
    link to another session's file, a FIFO), so reads check that they still get that file.
    """

    id: str
    mime_type: str
    path: Path
    size: int
    device: int
    inode: int

    def open(self) -> BinaryIO:
        """Open the file for reading; StoredFileChangedError when it is no longer ours.

        The check is made on the opened file itself, so nothing can be swapped in between.
        """
        try:
            descriptor = os.open(self.path, _READ_FLAGS)
        except OSError as e:  # gone, or a symlink (ELOOP under O_NOFOLLOW)
            raise StoredFileChangedError(f"{self.path} is gone or not a regular file") from e
        try:
            status = os.fstat(descriptor)
            if not self._is_same_file(status):
                raise StoredFileChangedError(f"{self.path} was replaced or changed")
            return open(descriptor, "rb")
        except BaseException:
            os.close(descriptor)
            raise

    def is_intact(self) -> bool:
        """Whether ``path`` still holds the very file the store wrote, unchanged in size."""
        try:
            self.open().close()
        except StoredFileChangedError:
            return False
        return True

    def _is_same_file(self, status: os.stat_result) -> bool:
        return (
            stat.S_ISREG(status.st_mode)
            and (status.st_dev, status.st_ino) == (self.device, self.inode)
            and status.st_size == self.size
        )


class OutputStore:
    """The captured files of one session, kept in a private folder and addressed by random ids.

    Ids are unguessable tokens (144 random bits) and every lookup goes through the store's
    own index, so no request can name a path: ``..`` and absolute paths never reach the file
    system through here. The folder is writable by the session's kernel (same user), so a
    lookup also checks that the file is still the one written here (see :class:`StoredFile`):
    a symlink or another file the kernel puts in its place is never served.
    """

    def __init__(self, directory: Path, url_prefix: str, max_bytes: int = 0) -> None:
        """Keep files in ``directory`` (created if missing); ``url_prefix`` + id downloads one.

        ``max_bytes`` caps the bytes of all files together (0: no cap).
        """
        self.directory = directory
        self.url_prefix = url_prefix
        self.max_bytes = max_bytes
        self._files: dict[str, StoredFile] = {}
        self._total_size = 0
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def total_size(self) -> int:
        """Bytes held by all stored files."""
        return self._total_size

    def save(self, data: bytes, mime_type: str) -> StoredFile:
        """Store ``data`` as a new file and return its record; StoreFullError past the cap."""
        self._check_room(len(data))
        file_id, path = self._new_path(mime_type)
        with open(_create(path), "wb") as handle:
            handle.write(data)
            handle.flush()
            status = os.fstat(handle.fileno())
        return self._register(file_id, mime_type, path, status)

    def open_text(self) -> TextWriter:
        """Open a new text file to be written in pieces; call :meth:`finish_text` when done.

        Its bytes count against the cap as they are written, so the cap holds while it grows.
        """
        file_id, path = self._new_path("text/plain")
        return TextWriter(self, file_id, path, open(_create(path), "wb"))

    def finish_text(self, writer: TextWriter) -> StoredFile | None:
        """Close a file opened by :meth:`open_text` and register it; None when it is empty
        (the cap left no room for any of it), and then it is deleted.
        """
        # The size and identity come from the handle we wrote, not from whatever is at the
        # path by now.
        handle = writer.handle
        handle.flush()
        status = os.fstat(handle.fileno())
        handle.close()
        self._total_size -= writer.size  # counted while it grew; registering counts it again
        if not writer.size:
            writer.path.unlink(missing_ok=True)
            return None
        return self._register(writer.id, "text/plain", writer.path, status)

    def get(self, file_id: str) -> StoredFile | None:
        """The stored file with this id, or None (also when it was replaced on disk)."""
        if not FILE_ID_PATTERN.match(file_id):
            return None
        stored = self._files.get(file_id)
        if stored is None or not stored.is_intact():
            return None
        return stored

    def model(self, stored: StoredFile) -> dict[str, Any]:
        """The JSON model of a stored file, as the API returns it."""
        return {
            "id": stored.id,
            "mime_type": stored.mime_type,
            "size": stored.size,
            "url": f"{self.url_prefix}{stored.id}",
        }

    def remove_all(self) -> None:
        """Delete every stored file and the folder itself."""
        self._files.clear()
        self._total_size = 0
        shutil.rmtree(self.directory, ignore_errors=True)

    def _new_path(self, mime_type: str) -> tuple[str, Path]:
        file_id = secrets.token_urlsafe(18)
        return file_id, self.directory / f"{file_id}{suffix(mime_type)}"

    def room(self) -> int | None:
        """Bytes that may still be stored (files being written count), or None: no cap."""
        if not self.max_bytes:
            return None
        return max(self.max_bytes - self._total_size, 0)

    def limit_message(self) -> str:
        """Why a file was not kept, or not kept whole."""
        return f"the session's files reached their limit of {self.max_bytes} bytes"

    def _check_room(self, size: int) -> None:
        room = self.room()
        if room is not None and size > room:
            raise StoreFullError(self.limit_message())

    def _register(
        self, file_id: str, mime_type: str, path: Path, status: os.stat_result
    ) -> StoredFile:
        stored = StoredFile(
            id=file_id,
            mime_type=mime_type,
            path=path,
            size=status.st_size,
            device=status.st_dev,
            inode=status.st_ino,
        )
        self._files[file_id] = stored
        self._total_size += stored.size
        return stored


def suffix(mime_type: str) -> str:
    """The file name suffix for data of ``mime_type`` ("" when none is known)."""
    if mime_type in _SUFFIXES:
        return _SUFFIXES[mime_type]
    if mime_type.endswith("+json"):
        return ".json"
    return mimetypes.guess_extension(mime_type) or ""


class TextWriter:
    """A text file of the store written in pieces, which stops growing at the session's cap.

    Each write is counted against the cap before it reaches the disk, so the store's folder
    never holds more than the cap, even while a cell prints without end. Past the cap the
    file keeps what fitted (cut at a character boundary) and ``complete`` turns False.
    """

    def __init__(self, store: OutputStore, file_id: str, path: Path, handle: BinaryIO) -> None:
        """Write to ``handle``, the new file ``path`` of ``store`` (see ``open_text``)."""
        self.store = store
        self.id = file_id
        self.path = path
        self.handle = handle
        #: Bytes and characters written so far.
        self.size = 0
        self.chars = 0
        #: False once a write did not fit under the cap: the file holds only the beginning.
        self.complete = True

    def write(self, text: str) -> None:
        """Append ``text`` (UTF-8), or as much of it as the cap leaves room for."""
        if not self.complete or not text:
            return
        # "replace": a lone surrogate (a kernel may send one) must not stop the file.
        data = text.encode("utf-8", "replace")
        room = self.store.room()
        if room is not None and len(data) > room:
            self.complete = False
            data = data[: _character_boundary(data, room)]
            text = data.decode("utf-8")
        self.handle.write(data)
        self.size += len(data)
        self.chars += len(text)
        self.store._total_size += len(data)


def _character_boundary(data: bytes, limit: int) -> int:
    """The largest cut at most ``limit`` that does not split a UTF-8 character of ``data``."""
    cut = limit
    while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:  # a continuation byte
        cut -= 1
    return cut


def _create(path: Path) -> int:
    """A descriptor of a new file only its owner reads; fails if anything is at ``path``."""
    return os.open(path, _CREATE_FLAGS, 0o600)
