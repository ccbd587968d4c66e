"""Checking and decoding image bytes before anything is stored or encoded.

Pillow only warns on huge images unless told otherwise, so the pixel limit is
checked from the header (before the pixels are decoded), Pillow's own bomb
check is an error, and a truncated file is caught by forcing a full decode.
Every decode in the service (add, image search, jobs, thumbnails, loads)
goes through `probe` and `check_image`, so each maps Pillow's failures the
same way: 413 too many pixels, 415 not an image, 422 corrupt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pybase64
from PIL import Image, UnidentifiedImageError

from datasets.formats import decode_b64
from operations.errors import InvalidInput, PayloadTooLarge, ServiceError, UnsupportedMedia

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


# EXIF orientation (tag 0x0112) -> the transpose that shows the image upright
# (the TIFF/EXIF specification's table; Pillow's ImageOps.exif_transpose uses
# the same one). Applied before encoding, to thumbnails and to the stored
# width/height; the original bytes are stored unchanged.
ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@contextlib.contextmanager
def _opened(data: bytes) -> Iterator[Image.Image]:
    """Image.open with Pillow's decompression-bomb warning raised as an error.

    Pillow refuses more than 2x its MAX_IMAGE_PIXELS with an error and only
    warns above 1x; both become a 413 here, whatever our own (lower or higher)
    pixel limit is, so no header can make the server allocate unbounded memory.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                yield im
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadTooLarge(f"image declares too many pixels: {exc}") from None


def orientation(im: Image.Image) -> int:
    """The EXIF orientation 1..8 (1 when absent or unreadable: a broken EXIF block is not a broken image)."""
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # Pillow raises assorted errors on malformed EXIF
        return 1
    return value if isinstance(value, int) and value in range(1, 9) else 1


def probe(data: bytes) -> tuple[str, int, int]:
    """(mime, width, height as shown, i.e. after EXIF orientation) from the header only.

    415 for bytes in no known image format, 413 for a header declaring more
    pixels than Pillow will ever decode, 422 for a header that cannot be read.
    """
    try:
        with _opened(data) as im:
            fmt, (width, height), turn = im.format, im.size, orientation(im)
    except ServiceError:
        raise
    except UnidentifiedImageError:
        # Pillow's message names a memory address; say what matters instead.
        raise UnsupportedMedia("not an image: the bytes are not in a known image format") from None
    except Exception as exc:  # a plugin choking on a malformed header
        raise InvalidInput(f"image header is corrupt: {type(exc).__name__}: {exc}"[:300]) from None
    if fmt not in MIME_BY_FORMAT:
        raise UnsupportedMedia(f"unsupported image format {fmt}")
    if turn in (5, 6, 7, 8):
        width, height = height, width
    return MIME_BY_FORMAT[fmt], width, height


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB as a viewer shows it: 16-bit greyscale scaled to 8 bits, not clipped to white."""
    if im.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(im, dtype=np.float64)
        scaled = np.clip(grey, 0, 65535) / 257.0
        return Image.fromarray(np.rint(scaled).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        values = np.clip(np.nan_to_num(np.asarray(im, dtype=np.float64)), 0, 255)
        return Image.fromarray(np.rint(values).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def check_image(data: bytes, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Validate and fully decode an uploaded image, turned upright (EXIF orientation).

    415 for non-images, 413 for too many bytes or pixels, 422 for a truncated
    or corrupt image. An animation gives its first frame.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise InvalidInput("empty upload")
    mime, width, height = probe(data)
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image has {width}x{height} pixels; the limit is {max_pixels} pixels")
    try:
        with _opened(data) as im:
            im.load()  # a truncated file fails here, not later in the encoder
            rgb = to_rgb(im)
            turn = orientation(im)
    except ServiceError:
        raise
    except MemoryError:
        raise PayloadTooLarge("image is too large to decode") from None
    except Exception as exc:  # OSError, SyntaxError, struct.error, ...: Pillow's plugins vary
        raise InvalidInput(f"image is truncated or corrupt: {exc}"[:300]) from None
    if turn in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[turn])
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
