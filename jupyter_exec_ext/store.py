"""Storage of the files a session's code showed: images, HTML and full texts of cut output."""

from __future__ import annotations

import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: File ids are url-safe tokens we make ourselves; anything else cannot name a stored file.
FILE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

#: Suffixes make the files readable by a person who opens the store folder.
_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/svg+xml": ".svg",
    "text/html": ".html",
    "text/plain": ".txt",
}


class StoreFullError(Exception):
    """Keeping the file would take the session past its limit of stored bytes."""


@dataclass(frozen=True)
class StoredFile:
    """One captured output kept on disk."""

    id: str
    mime_type: str
    path: Path
    size: int


class OutputStore:
    """The captured files of one session, kept in a private folder and addressed by random ids.

    Ids are unguessable tokens and every lookup goes through the store's own index, so no
    request can name a path: ``..``, absolute paths and symlinks the kernel makes never reach
    the file system through here.
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
        path.write_bytes(data)
        return self._register(file_id, mime_type, path)

    def open_text(self) -> tuple[str, IO[str]]:
        """Open a new text file to be written in pieces; call :meth:`finish_text` when done."""
        file_id, path = self._new_path("text/plain")
        return file_id, path.open("w", encoding="utf-8")

    def finish_text(self, file_id: str, handle: IO[str]) -> StoredFile:
        """Close a file opened by :meth:`open_text` and register it; StoreFullError past the cap."""
        handle.close()
        path = self.directory / f"{file_id}{_SUFFIXES['text/plain']}"
        try:
            self._check_room(path.stat().st_size)
        except StoreFullError:
            path.unlink()
            raise
        return self._register(file_id, "text/plain", path)

    def get(self, file_id: str) -> StoredFile | None:
        """The stored file with this id, or None."""
        if not FILE_ID_PATTERN.match(file_id):
            return None
        return self._files.get(file_id)

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
        return file_id, self.directory / f"{file_id}{_SUFFIXES.get(mime_type, '')}"

    def _check_room(self, size: int) -> None:
        if self.max_bytes and self._total_size + size > self.max_bytes:
            raise StoreFullError(
                f"the session's files reached their limit of {self.max_bytes} bytes"
            )

    def _register(self, file_id: str, mime_type: str, path: Path) -> StoredFile:
        stored = StoredFile(id=file_id, mime_type=mime_type, path=path, size=path.stat().st_size)
        self._files[file_id] = stored
        self._total_size += stored.size
        return stored
