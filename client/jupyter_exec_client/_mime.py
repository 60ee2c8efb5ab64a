"""What an agent gets of a display: one text to read, and files for everything else.

The same rules as the server's (``jupyter_exec_ext/mime.py``, which the client cannot
import), for servers without the agent-session API; a test checks that both agree.

A result or a display carries a MIME bundle: one thing in several types. A model reads text,
so one text representation goes into ``output``, the most readable one; everything else that
is not text is kept as a file of the session, so nothing a display carried is lost:

* **Text** is the first of :data:`TEXT_PREFERENCE` the bundle has, else any other ``text/*``
  type but HTML. A notebook renders Markdown, LaTeX and a JSON document before the plain
  text beside them, which for IPython's display objects is only a placeholder such as
  ``<IPython.core.display.Markdown object>``.
* **Files**: one picture per display, the first of :data:`PICTURE_PREFERENCE` (a figure
  offered as PNG and SVG gives one image), else its HTML; and every type that is neither
  text nor an image, one file each (``application/pdf``, a renderer's ``+json`` model,
  ``application/javascript``, video, ...).

The other text types of a bundle (the plain text beside a Markdown display) are not kept;
``mime_types`` of the output item names every type the bundle had.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

#: Text types shown in ``output``, most readable first.
TEXT_PREFERENCE = ("text/markdown", "text/latex", "application/json", "text/plain")
#: Pictures, of which a display keeps one, in order of preference.
PICTURE_PREFERENCE = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/bmp",
    "image/svg+xml",
)
HTML_MIME_TYPE = "text/html"


def is_json_type(mime_type: str) -> bool:
    """Whether a bundle holds data of this type as a JSON value (not a string)."""
    return mime_type == "application/json" or mime_type.endswith("+json")


def is_text_type(mime_type: str) -> bool:
    """Whether a bundle holds this type as text; every other type is base64-encoded bytes.

    The rule of the notebook format: ``text/*``, JSON types, XML types such as SVG, and
    JavaScript are text.
    """
    return (
        mime_type.startswith("text/")
        or is_json_type(mime_type)
        or mime_type.endswith("+xml")
        or mime_type in ("application/xml", "application/javascript")
    )


@dataclass
class Representation:
    """The parts of a MIME bundle an agent gets."""

    #: The type of :attr:`text`, or None when the bundle has no text to show.
    text_type: str | None = None
    #: The text shown in ``output``.
    text: str | None = None
    #: The types kept as files, in the order they are named in ``output``.
    file_types: list[str] = field(default_factory=list)


def choose(data: dict[str, Any]) -> Representation:
    """Pick the text to show and the types to keep as files from the bundle ``data``."""
    representation = Representation()
    text_type = next((m for m in TEXT_PREFERENCE if m in data), None)
    if text_type is None:
        text_type = next(
            (m for m in data if m.startswith("text/") and m != HTML_MIME_TYPE), None
        )
    if text_type is not None:
        representation.text_type = text_type
        representation.text = as_text(text_type, data[text_type])
    picture = next((m for m in PICTURE_PREFERENCE if m in data), None)
    if picture is None:
        picture = next((m for m in data if m.startswith("image/")), None)
    if picture is not None:
        representation.file_types.append(picture)
    elif HTML_MIME_TYPE in data:
        representation.file_types.append(HTML_MIME_TYPE)
    representation.file_types.extend(
        m
        for m in data
        if not (m.startswith(("text/", "image/")) or m == "application/json")
    )
    return representation


def as_text(mime_type: str, value: Any) -> str:
    """The text of a bundle's ``value`` of ``mime_type``: JSON values indented, lists joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        # nbformat allows multi-line strings as lists of lines.
        return "".join(value)
    if is_json_type(mime_type) or isinstance(value, (dict, list)):
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return str(value)


class UnusableDataError(ValueError):
    """A bundle's value cannot be turned into the bytes of its type."""


def payload(mime_type: str, value: Any) -> bytes:
    """The bytes of a file holding a bundle's ``value`` of ``mime_type``.

    Raises :class:`UnusableDataError` for binary data that is not base64 text.
    """
    if is_text_type(mime_type):
        return as_text(mime_type, value).encode("utf-8", errors="backslashreplace")
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        value = "".join(value)
    if not isinstance(value, str):
        raise UnusableDataError("its data is not base64 text")
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as e:
        raise UnusableDataError(f"its data is not valid base64 ({e})") from None
