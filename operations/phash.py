"""Perceptual hashes: the "same picture, re-encoded, resized or lightly cropped" duplicate tier.

A 64-bit pHash (`imagehash.phash`: the low frequencies of a 32x32 greyscale DCT, one bit
each for above/below their median) barely moves when an image is re-encoded or resized,
and moves a few bits under a light crop; two different photos differ in about half the
bits. Two images are the same picture when the Hamming distance of their hashes is at most
PHASH_MAX_DISTANCE.

Indexed lookup without reading every row: the hash is also stored as four 16-bit bands,
each an indexed SQL column. If two hashes differ in at most 4(r + 1) - 1 bits, the
pigeonhole principle puts at most r differing bits in one band at least; so the
candidates are the rows whose band i equals the query's band i, or (for r = 1) differs
from it in one bit: 4 x 17 indexed equality lookups. `probe_values` gives those values;
r = 0 covers distances 0..3, r = 1 covers 0..7 (the largest PHASH_MAX_DISTANCE allowed).
The exact Hamming distance is then computed on the candidates only.
"""

from __future__ import annotations

import imagehash

# imagehash.phash imports scipy.fftpack inside the function; the first calls of two threads at
# once (an add and a search by image on a fresh process) could meet a half-initialised scipy
# ("cannot import name ... partially initialized module"). Imported here, once, at start.
import scipy.fftpack  # noqa: F401
from PIL import Image

BANDS = 4
BAND_BITS = 16
MAX_DISTANCE = 7  # what one-bit probes of 4 bands guarantee (see the module docstring)


def phash64(image: Image.Image) -> int:
    """The 64-bit pHash of `image` as a signed int64 (what an SQL BIGINT holds)."""
    h = imagehash.phash(image.convert("RGB"), hash_size=8)
    value = 0
    for bit in h.hash.flatten():
        value = (value << 1) | int(bit)
    return to_signed(value)


def to_signed(value: int) -> int:
    """An unsigned 64-bit value as the signed int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def bands(value: int) -> tuple[int, ...]:
    """The four 16-bit bands of a 64-bit hash (signed or unsigned), most significant first."""
    u = value & ((1 << 64) - 1)
    return tuple((u >> (BAND_BITS * (BANDS - 1 - i))) & 0xFFFF for i in range(BANDS))


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes."""
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


def probe_radius(max_distance: int) -> int:
    """Differing bits per band to probe so that every hash within `max_distance` is a candidate."""
    if not 0 <= max_distance <= MAX_DISTANCE:
        raise ValueError(f"a pHash distance must be in 0..{MAX_DISTANCE}")
    return 0 if max_distance < BANDS else 1


def probe_values(band: int, radius: int) -> list[int]:
    """The band value itself, and with radius 1 the 16 values one bit away."""
    values = [band]
    if radius:
        values += [band ^ (1 << bit) for bit in range(BAND_BITS)]
    return values
