"""The pHash band index finds exactly what a scan of every row finds, on SQLite and MariaDB."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from operations.domain import ImageRow
from operations.duplicates import same_picture
from operations.phash import MAX_DISTANCE, bands, hamming, probe_radius, to_signed
from operations.stores.sql_image_store import SqlImageStore
from operations.stores.sql_pool import SqlPool
from tests.stack import unique


@pytest.fixture(params=["sqlite", "mariadb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqlImageStore(SqlPool("", tmp_path / "i.sqlite3", 5, 4))
    else:
        s = SqlImageStore(SqlPool(request.getfixturevalue("mariadb").create_database(), None, 5, 8))
    yield s
    s.close()


def _flip(value: int, bits: list[int]) -> int:
    u = value & ((1 << 64) - 1)
    for b in bits:
        u ^= 1 << b
    return to_signed(u)


def test_band_lookup_equals_a_full_scan_for_every_allowed_distance(store):
    """Random hashes plus copies of a few queries at 0..10 flipped bits (spread over the
    bands, the hard case for a band index), including hashes with the top bit set (negative
    as BIGINT). For each distance 0..7 the indexed lookup returns exactly the rows a full
    Hamming scan returns."""
    rng = np.random.default_rng(7)
    collection = unique("ph")
    store.ensure_collection(collection)
    values: dict[int, int] = {}
    next_id = 1
    queries = [to_signed(int(x)) for x in rng.integers(0, 2**63, 6, dtype=np.uint64) * 2]
    for q in queries:
        for d in range(11):
            # d bits spread round-robin over the 4 bands
            bits = [(i % 4) * 16 + int(rng.integers(16)) for i in range(d)]
            bits = list(dict.fromkeys(bits))
            values[next_id] = _flip(q, bits)
            next_id += 1
    for x in rng.integers(0, 2**64 - 1, 2000, dtype=np.uint64):
        values[next_id] = to_signed(int(x))
        next_id += 1
    ids = list(values)
    store.insert_rows(
        collection,
        [ImageRow(id=i, sha256=hashlib.sha256(str(i).encode()).hexdigest(), image_b64="eA==") for i in ids],
    )
    store.put_phashes(collection, [(i, values[i], bands(values[i])) for i in ids])
    for q in queries:
        for max_d in range(MAX_DISTANCE + 1):
            got = same_picture(store, collection, q, max_d)
            want = sorted((hamming(q, v), i) for i, v in values.items() if hamming(q, v) <= max_d)
            assert [(g["distance"], g["id"]) for g in got] == want, (max_d, probe_radius(max_d))
    # Only the band's rows are read: a lookup returns far fewer candidates than rows.
    probes = [[b] for b in bands(queries[0])]
    assert len(store.phash_candidates(collection, probes)) < len(ids) / 10
    # Deleting an image deletes its hash; an image without one is listed for a backfill.
    store.delete(collection, [ids[0]])
    assert all(g["id"] != ids[0] for g in same_picture(store, collection, queries[0], 7))
    store.insert_rows(collection, [ImageRow(id=10**6, sha256="f" * 64, image_b64="eA==")])
    assert store.ids_without_phash(collection, 0, 10) == [10**6]
    store.drop_collection(collection)


def test_listing_links_equal_a_full_scan_across_pages(store, monkeypatch):
    """The duplicate listing probes a page of hashes at once (operations.phash_pairs):
    with pages of 37 it links exactly the pairs a scan of every pair finds, for distances up to
    7 spread over all four bands (the one-bit probes) and across page boundaries."""
    from operations import phash_pairs
    from operations.duplicate_links import Links
    from operations.phash_pairs import iter_phash_pairs
    from operations.progress import Counter

    rng = np.random.default_rng(11)
    collection = unique("phl")
    store.ensure_collection(collection)
    values: dict[int, int] = {}
    for q in (to_signed(int(x)) for x in rng.integers(0, 2**63, 12, dtype=np.uint64) * 2):
        for d in range(9):
            bits = list(dict.fromkeys((i % 4) * 16 + int(rng.integers(16)) for i in range(d)))
            # ids interleaved, so near hashes land on different pages
            values[int(rng.integers(1, 10**9))] = _flip(q, bits)
    for x in rng.integers(0, 2**64 - 1, 300, dtype=np.uint64):
        values[int(rng.integers(1, 10**9))] = to_signed(int(x))
    store.insert_rows(
        collection,
        [
            ImageRow(id=i, sha256=hashlib.sha256(str(i).encode()).hexdigest(), image_b64="eA==")
            for i in values
        ],  # noqa: E501
    )
    store.put_phashes(collection, [(i, v, bands(v)) for i, v in values.items()])
    monkeypatch.setattr(phash_pairs, "HASH_PAGE", 37)
    ids = sorted(values)
    for max_d in (3, 6, 7):
        links = Links()
        for pairs in iter_phash_pairs(store, collection, max_d, Counter()):
            for a, b, d in pairs:
                links.add_phash(a, b, d)
        want = {
            (a, b): hamming(values[a], values[b])
            for n, a in enumerate(ids)
            for b in ids[n + 1 :]
            if hamming(values[a], values[b]) <= max_d
        }
        got_groups = {frozenset(m.image_id for m in g.members) for g in links.groups()}
        # every wanted pair is in one group, and every group is connected by wanted pairs
        parent = {i: i for i in ids}
        for a, b in want:
            parent[_root(parent, a)] = _root(parent, b)
        components: dict[int, set[int]] = {}
        for i in ids:
            components.setdefault(_root(parent, i), set()).add(i)
        assert got_groups == {frozenset(c) for c in components.values() if len(c) > 1}, max_d
        best = {i: min(d for pair, d in want.items() if i in pair) for pair in want for i in pair}
        assert links.distance == best
        assert max_d < 4 or any(d >= 4 for d in want.values())  # found only by the one-bit probes
    store.drop_collection(collection)


def _root(parent: dict[int, int], x: int) -> int:
    while parent[x] != x:
        x = parent[x]
    return x


def test_scipy_is_imported_with_the_module_not_on_the_first_hash():
    """imagehash.phash imports scipy.fftpack on its first call; two threads' first calls at once
    (an add and a search by image on a fresh process) once met a half-initialised scipy. The
    import happens when operations.phash is imported, before any request thread exists."""
    import subprocess
    import sys

    code = "import sys, operations.phash; print('scipy.fftpack' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
