"""Every image decode maps Pillow's bomb and format errors to 413/422 with a message,
and images come out as people took them (EXIF orientation, CMYK, 16-bit, animations).

Unit tests on operations.images, then the same files through every path that decodes:
add, image search, thumbnails, bulk add jobs, folder add and loads (Milvus Lite + SQLite).
"""

from __future__ import annotations

import base64
import functools
import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from operations.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from operations.images import check_image, probe, thumbnail_jpeg
from tests.stack import jpeg, make_services, make_settings, tiny_encoder, unique, wait_job, write_image_tsv

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000


# -- crafted files ------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache  # bytes: the same bomb serves every test that sends it
def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of `width` x `height` black pixels: zeros compress ~1000:1."""
    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def png_header_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes: a header declaring `width` x `height`, a little data, no more."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body * 10) + _chunk(b"IEND", b"")


QUADRANTS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255))  # TL, TR, BL, BR


def quadrant_image(width: int = 120, height: int = 40) -> Image.Image:
    im = Image.new("RGB", (width, height))
    w, h = width // 2, height // 2
    for (x, y), colour in zip(((0, 0), (w, 0), (0, h), (w, h)), QUADRANTS, strict=True):
        im.paste(colour, (x, y, x + w, y + h))
    return im


def jpeg_with_orientation(orientation: int, width: int = 120, height: int = 40) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    quadrant_image(width, height).save(out, format="JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


# What a viewer shows for each EXIF orientation (the TIFF/EXIF specification), written
# out here rather than taken from the code under test.
EXPECTED_TRANSPOSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def expected_view(orientation: int) -> Image.Image:
    im = quadrant_image()
    method = EXPECTED_TRANSPOSE[orientation]
    return im if method is None else im.transpose(method)


def corner_colours(im: Image.Image) -> list[tuple[int, ...]]:
    w, h = im.size
    return [
        im.convert("RGB").getpixel((int(w * fx), int(h * fy)))
        for fx, fy in ((0.2, 0.2), (0.8, 0.2), (0.2, 0.8), (0.8, 0.8))
    ]


def assert_same_view(actual: Image.Image, expected: Image.Image) -> None:
    assert (
        actual.size[0] > actual.size[1]
        if expected.size[0] > expected.size[1]
        else actual.size[0] < actual.size[1]
    )
    for got, want in zip(corner_colours(actual), corner_colours(expected), strict=True):
        assert np.abs(np.array(got, dtype=int) - np.array(want, dtype=int)).max() < 60, (got, want)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0))]
    out = io.BytesIO()
    frames[0].save(out, format="WEBP", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


def cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(out, format="JPEG")  # red
    return out.getvalue()


def png16() -> bytes:
    """A 16-bit grayscale PNG: left half mid-grey (32768), right half full white."""
    arr = np.zeros((30, 40), dtype=np.uint16)
    arr[:, :20] = 32768
    arr[:, 20:] = 65535
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def corrupt_png() -> bytes:
    out = io.BytesIO()
    quadrant_image().save(out, format="PNG")
    data = bytearray(out.getvalue())
    i = data.index(b"IDAT") + 20
    data[i : i + 40] = b"\x13" * 40  # the compressed stream no longer inflates
    return bytes(data)


BOMBS = {
    "png_20000x20000": lambda: png_bomb(20000, 20000),
    "header_100000x100000": lambda: png_header_bomb(100000, 100000),
}


# -- unit ----------------------------------------------------------------------------


def test_the_crafted_bombs_are_what_they_claim():
    big = png_bomb(20000, 20000)
    assert len(big) < 100_000
    small = png_header_bomb(100000, 100000)
    assert len(small) < 400
    for data, size in ((big, (20000, 20000)), (small, (100000, 100000))):
        Image.MAX_IMAGE_PIXELS, saved = None, Image.MAX_IMAGE_PIXELS
        try:
            assert Image.open(io.BytesIO(data)).size == size
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_are_payload_too_large_with_a_message(name):
    data = BOMBS[name]()
    with pytest.raises(PayloadTooLarge, match="pixels"):
        check_image(data, MAX_BYTES, MAX_PIXELS)
    with pytest.raises(PayloadTooLarge, match="pixels"):
        probe(data)
    with pytest.raises(PayloadTooLarge):
        thumbnail_jpeg(data, 64, MAX_PIXELS)
    # With a pixel limit above Pillow's own, Pillow's bomb check still answers 413, not 500.
    with pytest.raises(PayloadTooLarge):
        check_image(data, MAX_BYTES, 10**12)


def test_corrupt_data_is_422_and_not_an_image_is_415():
    with pytest.raises(InvalidInput, match="corrupt"):
        check_image(corrupt_png(), MAX_BYTES, MAX_PIXELS)
    with pytest.raises(UnsupportedMedia):
        check_image(b"GIF89a" + b"\x00" * 3, MAX_BYTES, MAX_PIXELS)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_to_pixels_and_sizes(orientation):
    data = jpeg_with_orientation(orientation)
    checked = check_image(data, MAX_BYTES, MAX_PIXELS)
    want = expected_view(orientation)
    assert (checked.width, checked.height) == want.size
    assert checked.image.size == want.size
    assert_same_view(checked.image, want)
    assert checked.data == data  # the original bytes stay as they are
    assert probe(data)[1:] == want.size
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(data, 64, MAX_PIXELS)))
    assert max(thumb.size) == 64
    assert_same_view(thumb, want)


def test_cmyk_16bit_and_animated_images_decode_to_what_they_show():
    cmyk = check_image(cmyk_jpeg(), MAX_BYTES, MAX_PIXELS)
    assert cmyk.mime == "image/jpeg" and cmyk.image.mode == "RGB"
    r, g, b = cmyk.image.getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60
    deep = check_image(png16(), MAX_BYTES, MAX_PIXELS)
    assert deep.image.mode == "RGB"
    grey, white = deep.image.getpixel((5, 5)), deep.image.getpixel((35, 5))
    assert all(120 <= v <= 136 for v in grey), grey  # 32768/65535 of full scale, not clipped to white
    assert white == (255, 255, 255)
    for data, mime in ((animated_gif(), "image/gif"), (animated_webp(), "image/webp")):
        checked = check_image(data, MAX_BYTES, MAX_PIXELS)
        assert checked.mime == mime and (checked.width, checked.height) == (40, 30)
        assert checked.image.getpixel((5, 5))[0] > 200  # the first frame (red)


def test_a_frame_count_bomb_is_refused():
    """An animation whose frames together pass the pixel limit is not decoded frame by frame."""
    frames = [Image.new("P", (1000, 1000), i) for i in range(50)]  # palette frames: GIF's own mode
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    checked = check_image(out.getvalue(), MAX_BYTES, MAX_PIXELS)  # only the first frame is read
    assert checked.image.size == (1000, 1000)


# -- through the API -------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("decode"))
    svc = make_services(settings)
    with TestClient(create_app(settings, svc)) as c:
        c.services = svc
        collection = unique("dec")
        assert c.post("/img/collections", json={"name": collection}).status_code == 201
        assert (
            c.post(f"/img/images/{collection}", files={"files": ("a.jpg", jpeg(1), "image/jpeg")}).status_code
            == 200
        )
        c.collection = collection
        yield c


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_through_add_and_image_search(lite, name):
    data = BOMBS[name]()
    c = lite.collection
    r = lite.post("/img/search/image", files={"file": ("b.png", data, "image/png")}, data={"collection": c})
    assert r.status_code == 413, r.text
    assert "pixels" in r.json()["error"]["message"]
    r = lite.post(f"/img/images/{c}", files={"files": ("b.png", data, "image/png")})
    assert r.status_code == 200, r.text
    item = r.json()["results"][0]
    assert item["status"] == "failed" and "pixels" in item["error"]


def test_bombs_in_a_bulk_add_job_folder_add_and_load_are_reported_per_file(lite):
    settings = lite.services.settings
    c = lite.collection
    before = lite.get(f"/img/collections/{c}/count").json()["images"]
    files = [("files", (f"ok{i}.jpg", jpeg(500 + i), "image/jpeg")) for i in range(settings.inline_add_limit)]
    files += [("files", ("bomb.png", BOMBS["png_20000x20000"](), "image/png"))]
    files += [("files", ("tiny.png", BOMBS["header_100000x100000"](), "image/png"))]
    r = lite.post(f"/img/images/{c}", files=files)
    assert r.status_code == 202, r.text
    job = wait_job(lite, r.json()["job_id"])
    assert job["state"] == "succeeded" and job["failed"] == 2, job
    assert all("pixels" in f["reason"] for f in job["failures"])
    assert lite.get(f"/img/collections/{c}/count").json()["images"] == before + settings.inline_add_limit

    folder = settings.data_root / "bombs"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(BOMBS["png_20000x20000"]())
    (folder / "header.png").write_bytes(BOMBS["header_100000x100000"]())
    (folder / "corrupt.png").write_bytes(corrupt_png())
    (folder / "fine.jpg").write_bytes(jpeg(777))
    r = lite.post(f"/img/images/{c}/folder", json={"folder": "bombs"})
    job = wait_job(lite, r.json()["job_id"])
    assert job["state"] == "succeeded" and job["failed"] == 3, job

    ds = settings.data_root / "bombds"
    ds.mkdir()
    write_image_tsv(
        ds / "valid_imgs.tsv",
        [
            (1, BOMBS["png_20000x20000"]()),
            (2, BOMBS["header_100000x100000"]()),
            (3, corrupt_png()),
            (4, jpeg(3)),
        ],
    )
    collection = unique("bombload")
    r = lite.post("/img/load", json={"dataset": "bombds", "split": "valid", "collection": collection})
    job = wait_job(lite, r.json()["job_id"])
    assert job["state"] == "succeeded" and (job["processed"], job["failed"]) == (1, 3), job
    reasons = [f["reason"] for f in job["failures"]]
    assert sum("pixels" in r for r in reasons) == 2 and any("corrupt" in r for r in reasons), reasons


def test_thumbnail_of_a_stored_bomb_is_413_not_500(lite):
    """Rows stored before the checks (or by another tool) still cannot take the server down."""
    from operations.domain import ImageRow

    c = lite.collection
    data = BOMBS["png_20000x20000"]()
    row = ImageRow(
        id=None,
        sha256="f" * 64,
        image_b64=base64.b64encode(data).decode(),
        mime="image/png",
        width=20000,
        height=20000,
        source="old",
        created_at=0,
        added_at=0,
    )
    image_id, _ = lite.services.images.insert_new(c, row)
    r = lite.get(f"/img/images/{c}/{image_id}?size=128")
    assert r.status_code == 413 and "pixels" in r.json()["error"]["message"], r.text
    lite.services.images.delete(c, [image_id])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_through_the_api(lite, orientation):
    c = lite.collection
    data = jpeg_with_orientation(orientation, 120, 40)
    r = lite.post(f"/img/images/{c}", files={"files": (f"o{orientation}.jpg", data, "image/jpeg")})
    item = r.json()["results"][0]
    assert item["status"] in ("added", "present"), item
    want = expected_view(orientation)
    meta = lite.get(f"/img/images/{c}/{item['id']}/meta").json()
    assert (meta["width"], meta["height"]) == want.size
    assert lite.get(f"/img/images/{c}/{item['id']}").content == data  # original bytes unchanged
    thumb = Image.open(io.BytesIO(lite.get(f"/img/images/{c}/{item['id']}?size=64").content))
    assert_same_view(thumb, want)
    # The encoder saw the upright image: the stored vector is that of the decoded pixels
    # turned as the orientation says, not of the pixels as stored.
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    method = EXPECTED_TRANSPOSE[orientation]
    upright_pixels = decoded if method is None else decoded.transpose(method)
    vec = lite.services.vectors.get_vectors(c, [item["id"]])[item["id"]]
    upright, sideways = tiny_encoder().encode_images([upright_pixels, decoded])
    assert float(vec @ upright) > 1 - 1e-4
    if orientation != 1:
        assert float(vec @ sideways) < float(vec @ upright) - 1e-4


def test_a_calibration_split_with_bombs_skips_them(tmp_path):
    """Calibration encodes a split's images itself: the same decode, bombs skipped with a warning."""
    from operations.relevance.calibrate import read_labelled_split

    write_image_tsv(
        tmp_path / "valid_imgs.tsv",
        [(1, jpeg(1)), (2, BOMBS["png_20000x20000"]()), (3, BOMBS["header_100000x100000"]()), (4, jpeg(4))],
    )
    (tmp_path / "valid_texts.jsonl").write_text('{"text_id": 1, "text": "红色", "image_ids": [1, 4]}\n')
    data = read_labelled_split(tiny_encoder(), tmp_path, "valid")
    assert data.image_ids == [1, 4] and data.image_source == "images"
