"""Checking and decoding image bytes before anything is stored or encoded.

Pillow only warns on huge images unless told otherwise, so the pixel limit is
checked from the header (before the pixels are decoded), and a truncated file
is caught by forcing a full decode.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import pybase64
from PIL import Image, UnidentifiedImageError

from datasets.formats import decode_b64
from operations.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia

MIME_BY_FORMAT = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


@dataclass
class CheckedImage:
    data: bytes
    image: Image.Image  # fully decoded, RGB
    mime: str
    width: int
    height: int
    sha256: str

    @property
    def b64(self) -> str:
        return pybase64.b64encode(self.data).decode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def probe(data: bytes) -> tuple[str, int, int]:
    """(mime, width, height) from the header only; raises UnsupportedMedia."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, size = im.format, im.size
    except (UnidentifiedImageError, OSError, ValueError):
        # Pillow's message names a memory address; say what matters instead.
        raise UnsupportedMedia("not an image: the bytes are not in a known image format") from None
    if fmt not in MIME_BY_FORMAT:
        raise UnsupportedMedia(f"unsupported image format {fmt}")
    return MIME_BY_FORMAT[fmt], size[0], size[1]


def check_image(data: bytes, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Validate and fully decode an uploaded image.

    415 for non-images, 413 for too many bytes or pixels, 422 for a truncated
    or corrupt image.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise InvalidInput("empty upload")
    mime, width, height = probe(data)
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image has {width}x{height} pixels; the limit is {max_pixels} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()  # a truncated file fails here, not later in the encoder
                rgb = im.convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadTooLarge(f"image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(f"image is truncated or corrupt: {exc}") from None
    return CheckedImage(data, rgb, mime, width, height, sha256_hex(data))


def stored_image_bytes(b64: str) -> bytes:
    """The bytes of a stored base64 image (rows loaded before images were kept
    in the standard alphabet may be URL-safe; both decode)."""
    return decode_b64(b64)


def decode_b64_image(b64: str, max_pixels: int) -> Image.Image:
    """Decode a stored base64 image to RGB (for re-encoding and thumbnails)."""
    data = stored_image_bytes(b64)
    return check_image(data, max_bytes=len(data) + 1, max_pixels=max_pixels).image


def thumbnail_jpeg(data: bytes, size: int, max_pixels: int) -> bytes:
    """A JPEG no larger than size x size, keeping the aspect ratio."""
    image = check_image(data, len(data) + 1, max_pixels).image
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()
