"""Images made small enough for a model: downscaled on their long edge, bounded in bytes.

Needs Pillow (the ``[mcp]`` extra); without it :func:`downscale` raises
:class:`ImagesUnavailableError`, and the files route says which extra to install.
"""

from __future__ import annotations

import io
from typing import BinaryIO

#: Bytes an image may have after downscaling; past it the image is re-encoded as JPEG and
#: made smaller until it fits (Claude Desktop refuses tool results over 1 MiB).
MAX_IMAGE_BYTES = 750_000
#: Types Pillow reads and writes back in their own format.
_KEPT_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
#: Pixels Pillow may decode (its own guard against decompression bombs is a warning).
MAX_PIXELS = 100_000_000


class ImagesUnavailableError(RuntimeError):
    """Pillow is not installed."""


class NotAnImageError(ValueError):
    """The bytes are not an image Pillow can read."""


def downscale(
    handle: BinaryIO, mime_type: str, max_edge: int, max_bytes: int = MAX_IMAGE_BYTES
) -> tuple[bytes, str]:
    """The image of ``handle`` at most ``max_edge`` pixels on its long edge and at most
    ``max_bytes`` bytes: its bytes and media type (PNG, JPEG and WebP keep theirs while they
    fit; others, and those too large, become PNG or JPEG)."""
    try:
        from PIL import Image  # noqa: PLC0415 - the [mcp] extra, optional
    except ImportError as e:
        raise ImagesUnavailableError(
            "Downscaling images needs Pillow: pip install 'jupyter-exec-ext[mcp]'"
        ) from e
    data = handle.read()
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise NotAnImageError(f"the image has {image.width}x{image.height} pixels: too many")
        image.load()
    except (OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise NotAnImageError(f"not an image Pillow can read ({mime_type}): {e}") from e
    fits = max(image.size) <= max_edge and len(data) <= max_bytes
    if fits and mime_type in _KEPT_FORMATS:
        return data, mime_type
    image.thumbnail((max_edge, max_edge), Image.Resampling.LANCZOS)
    if mime_type in _KEPT_FORMATS or image.mode in ("RGBA", "LA", "P"):
        encoded = _encode(image, "PNG")
        if len(encoded) <= max_bytes:
            return encoded, "image/png"
    # Too large as PNG (a photo, a dense plot): JPEG, smaller until it fits.
    rgb = image.convert("RGB")
    while True:
        encoded = _encode(rgb, "JPEG", quality=85)
        if len(encoded) <= max_bytes or max(rgb.size) <= 64:
            return encoded, "image/jpeg"
        rgb.thumbnail((int(max(rgb.size) * 0.7),) * 2, Image.Resampling.LANCZOS)


def _encode(image: object, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, optimize=True, **options)  # type: ignore[attr-defined]
    return buffer.getvalue()
