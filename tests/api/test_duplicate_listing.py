"""GET/POST /img/duplicates/{collection} and the pHash backfill, on Milvus Lite + SQLite and on the
Milvus server + MariaDB.

Two collections:
- added through the API: demo-generator originals (one per family of look-alikes), their
  re-encoded (JPEG quality 35), resized (half) and lightly cropped (2% a side) copies, and the
  other members of their families (different but similar pictures);
- loaded from a dataset split with a features file (so its images have no pHash until the
  backfill): independent demo scenes, re-encoded copies of three of them, a burst of three
  different scenes whose features are nearly equal (the CLIP tier, with vectors we chose: the
  tests' random-weight model says nothing about real similarity), and a truncated JPEG that
  loads (its header is fine) but cannot be decoded for a pHash.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from datasets.demo_generator import generate_split
from datasets.formats import write_features_jsonl, write_image_tsv
from operations import duplicate_groups, phash_backfill, phash_pairs
from operations.duplicate_groups import compute_duplicates
from operations.duplicate_links import Links
from operations.jobs import RUNNERS
from operations.phash_backfill import backfill_phashes
from operations.progress import Counter
from tests.stack import unique, wait_job

N_FAMILIES = 12
N_COPIED = 8
COPY_KINDS = ("jpeg35", "resize50", "crop2")


def _jpeg(im: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    im.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _copy(data: bytes, kind: str) -> bytes:
    im = Image.open(io.BytesIO(data))
    if kind == "jpeg35":
        return _jpeg(im, 35)
    if kind == "resize50":
        return _jpeg(im.resize((im.width // 2, im.height // 2)))
    w, h = im.size
    dx, dy = int(w * 0.02), int(h * 0.02)
    return _jpeg(im.crop((dx, dy, w - dx, h - dy)))


@pytest.fixture(scope="module")
def client(module_client):
    return module_client


@pytest.fixture(scope="module")
def added(client):
    """(collection, id -> (picture, family, kind)): kind "original", a copy kind or "variant"."""
    split = generate_split("train", 60)
    originals: dict[int, int] = {}  # family -> index of its first image
    for i, fam in enumerate(split.families):
        if len(originals) < N_FAMILIES:
            originals.setdefault(fam, i)
    items = [(split.jpegs[i], i, f, "original") for f, i in originals.items()]
    for f, i in list(originals.items())[:N_COPIED]:
        items += [(_copy(split.jpegs[i], kind), i, f, kind) for kind in COPY_KINDS]
    items += [
        (split.jpegs[i], i, f, "variant")
        for i, f in enumerate(split.families)
        if f in originals and originals[f] != i
    ]
    collection = unique("dupl")
    assert client.post("/img/collections", json={"name": collection}).status_code == 201
    labels: dict[int, tuple[int, int, str]] = {}
    for start in range(0, len(items), 16):  # INLINE_ADD_LIMIT: answered inline
        part = items[start : start + 16]
        r = client.post(
            f"/img/images/{collection}",
            files=[("files", (f"{n}.jpg", data, "image/jpeg")) for n, (data, *_) in enumerate(part)],
        )
        assert r.status_code == 200, r.text
        for (_, picture, fam, kind), res in zip(part, r.json()["results"], strict=True):
            assert res["status"] == "added", res
            labels[res["id"]] = (picture, fam, kind)
    return collection, labels


def _all_groups(client, collection: str, **params) -> list[dict]:
    groups, after = [], 0
    while True:
        r = client.get(f"/img/duplicates/{collection}", params={**params, "after": after})
        assert r.status_code == 200, r.text
        body = r.json()
        groups += body["groups"]
        if body["next_after"] is None:
            return groups
        after = body["next_after"]


def _compute(client, collection: str, body: dict | None = None) -> dict:
    r = client.post(f"/img/duplicates/{collection}", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert (job["kind"], job["state"]) == ("duplicates", "succeeded"), job
    return job


def test_phash_groups_hold_each_copy_with_its_original(client, added):
    collection, labels = added
    job = _compute(client, collection, {"tiers": ["phash"]})
    groups = _all_groups(client, collection, limit=100, max_members=1000)
    assert groups and all(g["tier"] == "phash" for g in groups)
    group_of = {m["id"]: g["group"] for g in groups for m in g["members"]}
    for g in groups:
        assert g["size"] == len(g["members"]) >= 2
        # phash links only: every member has a distance within the threshold and no score.
        for m in g["members"]:
            assert m["distance"] is not None and m["distance"] <= 6 and m["score"] is None
    original_id = {p: i for i, (p, _, kind) in labels.items() if kind == "original"}
    recall = {}
    for kind in COPY_KINDS:
        copies = [(i, p) for i, (p, _, k) in labels.items() if k == kind]
        together = sum(i in group_of and group_of[i] == group_of.get(original_id[p]) for i, p in copies)
        recall[kind] = together / len(copies)
    # The same picture re-encoded or resized is grouped with its original; a 2% crop mostly.
    assert recall["jpeg35"] >= 0.75 and recall["resize50"] >= 0.75 and recall["crop2"] >= 0.5, recall
    # Precision: of the pairs a group claims are one picture, most are. (These flat synthetic
    # scenes give look-alikes close pHashes; bench/README.md has the measured figures.)
    pairs = right = 0
    for g in groups:
        ids = [m["id"] for m in g["members"]]
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                pairs += 1
                right += labels[ids[a]][0] == labels[ids[b]][0]
    assert right / pairs >= 0.5, (right, pairs)
    assert job["processed"] == job["total"]


def test_pages_walk_every_group_once_and_a_replaced_listing_is_a_conflict(client, added):
    collection, _ = added
    first = _compute(client, collection, {"tiers": ["phash"]})
    whole = client.get(f"/img/duplicates/{collection}", params={"limit": 100}).json()
    assert whole["job_id"] == first["id"] and whole["next_after"] is None
    assert whole["total"] == len(whole["groups"]) == whole["counts"]["phash"] >= 3
    assert whole["tiers"] == ["phash"] and whole["images"] == whole["images_now"]
    paged = _all_groups(client, collection, limit=2, job_id=first["id"])
    assert (
        [g["group"] for g in paged]
        == [g["group"] for g in whole["groups"]]
        == list(range(1, whole["total"] + 1))
    )
    # Larger groups first within a tier.
    assert [g["size"] for g in paged] == sorted((g["size"] for g in paged), reverse=True)
    assert _all_groups(client, collection, limit=3, tier="phash") == paged
    assert client.get(f"/img/duplicates/{collection}", params={"tier": "clip"}).json()["groups"] == []
    one = client.get(f"/img/duplicates/{collection}", params={"max_members": 1, "limit": 1}).json()
    g = one["groups"][0]
    assert len(g["members"]) == 1 and g["members_truncated"] is (g["size"] > 1)
    # A new listing replaces it: pages pinned to the old one are refused, not mixed.
    second = _compute(client, collection, {"tiers": ["phash"]})
    r = client.get(f"/img/duplicates/{collection}", params={"job_id": first["id"], "after": 2})
    assert r.status_code == 409 and r.json()["error"]["details"]["current"] == second["id"]
    assert client.get(f"/img/duplicates/{collection}").json()["job_id"] == second["id"]


# --- a collection loaded from a dataset -------------------------------------------------------


def _features(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _near(v: np.ndarray, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    w = v + noise * rng.standard_normal(v.shape).astype(np.float32) / np.sqrt(v.size)
    return w / np.linalg.norm(w)


@pytest.fixture(scope="module")
def loaded(client):
    """A collection loaded from a split with features: (collection, expected phash pairs,
    the burst's ids, the truncated image's id, the split's image count)."""
    svc = client.services
    dim = svc.encoder.dim
    rng = np.random.default_rng(5)
    scenes = generate_split("test", 24).jpegs  # independent scenes: 0..19 alone, 20..22 the burst
    records: list[tuple[int, bytes]] = [(100 + i, data) for i, data in enumerate(scenes[:20])]
    feats = list(_features(20, dim, rng))
    copies = {}
    for k, i in enumerate((0, 1, 2)):  # re-encoded copies of three scenes
        copy_id = 200 + k
        records.append((copy_id, _copy(scenes[i], "jpeg35")))
        feats.append(_near(feats[i], rng))
        copies[100 + i] = copy_id
    # A copy whose vector is unrelated to its original's: pHash alone says "same picture",
    # the CLIP check (PHASH_MIN_COSINE) says no.
    records.append((203, _copy(scenes[3], "jpeg35")))
    feats.append(_features(1, dim, rng)[0])
    burst = [300, 301, 302]  # three other scenes whose features are nearly one vector
    base = _features(1, dim, rng)[0]
    for k, image_id in enumerate(burst):
        records.append((image_id, scenes[20 + k]))
        feats.append(_near(base, rng))
    truncated = 400
    records.append((truncated, scenes[23][: len(scenes[23]) // 2]))
    feats.append(_features(1, dim, rng)[0])
    name = unique("dupset")
    folder = svc.settings.data_root / name
    folder.mkdir(parents=True)
    write_image_tsv(folder / "test_imgs.tsv", records)
    ids = [r[0] for r in records]
    write_features_jsonl(folder / "test_imgs.img_feat.jsonl", "image_id", ids, np.stack(feats))
    collection = unique("dupload")
    r = client.post("/img/load", json={"dataset": name, "split": "test", "collection": collection})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "succeeded" and job["processed"] == len(records), job
    return collection, {frozenset((a, b)) for a, b in copies.items()}, burst, truncated, len(records)


def test_first_read_starts_the_job_and_the_backfill_hashes_the_loaded_images(client, loaded):
    collection, copy_pairs, burst, truncated, n = loaded
    svc = client.services
    # A dataset load stores no pHash.
    assert svc.images.count_without_phash(collection) == n
    r = client.get(f"/img/duplicates/{collection}")
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "duplicates" and job["job_id"] == job["id"]
    job = wait_job(client, job["job_id"])
    assert job["state"] == "succeeded", job
    # The undecodable image is reported, the rest hashed.
    assert job["failed"] == 1 and str(truncated) in job["failures"][0]["item"], job
    assert svc.images.count_without_phash(collection) == 1
    body = client.get(f"/img/duplicates/{collection}", params={"limit": 100}).json()
    assert body["job_id"] == job["id"] and body["images"] == n and body["without_phash"] == 1
    assert body["counts"] == {"phash": 3, "clip": 1}, body
    phash = [g for g in body["groups"] if g["tier"] == "phash"]
    assert {frozenset(m["id"] for m in g["members"]) for g in phash} == copy_pairs
    for g in phash:  # the copies' features are near their originals' too: both links shown
        assert all(m["distance"] <= 6 and m["score"] >= 0.95 for m in g["members"])
    [clip] = [g for g in body["groups"] if g["tier"] == "clip"]
    assert [m["id"] for m in clip["members"]] == burst
    assert all(m["distance"] is None and 0.95 <= m["score"] <= 1.0 for m in clip["members"])
    # The phash groups come first.
    assert [g["tier"] for g in body["groups"]] == ["phash"] * 3 + ["clip"]
    # A backfill job now has only the undecodable image left.
    r = client.post(f"/img/collections/{collection}/phash")
    assert r.status_code == 202, r.text
    again = wait_job(client, r.json()["job_id"])
    assert (again["kind"], again["state"]) == ("phash", "succeeded")
    assert (again["processed"], again["failed"]) == (0, 1)


def test_listing_is_the_same_whatever_the_page_sizes(client, loaded, monkeypatch):
    """Ids, hashes and vectors are read in pages; pages of 5 find exactly the groups that one
    page finds (links across page boundaries included), and no read asks for more than a page."""
    collection, *_ = loaded
    svc = client.services
    whole = compute_duplicates(svc, collection, "whole")
    assert whole is not None
    wanted = client.get(f"/img/duplicates/{collection}", params={"limit": 100}).json()["groups"]
    asked: list[int] = []
    for name in ("phash_rows", "indexed_ids_after", "ids_without_phash"):
        real = getattr(svc.images, name)
        monkeypatch.setattr(
            svc.images, name, lambda c, after, limit, real=real: asked.append(limit) or real(c, after, limit)
        )
    monkeypatch.setattr(phash_pairs, "HASH_PAGE", 5)
    monkeypatch.setattr(duplicate_groups, "VECTOR_PAGE", 5)
    monkeypatch.setattr(phash_backfill, "PAGE", 5)
    paged = compute_duplicates(svc, collection, "paged")
    assert paged is not None and (paged.groups, paged.counts) == (whole.groups, whole.counts)
    got = client.get(f"/img/duplicates/{collection}", params={"limit": 100}).json()
    assert got["job_id"] == "paged"
    assert [(g["tier"], g["members"]) for g in got["groups"]] == [(g["tier"], g["members"]) for g in wanted]
    assert asked and max(asked) == 5 and len(asked) > 10


def test_a_phash_match_whose_vectors_disagree_is_not_the_same_picture(client, loaded):
    collection, copy_pairs, *_ = loaded
    _compute(client, collection)
    body = client.get(f"/img/duplicates/{collection}", params={"tier": "phash"}).json()
    assert body["phash_min_cosine"] == 0.8
    assert {frozenset(m["id"] for m in g["members"]) for g in body["groups"]} == copy_pairs
    _compute(client, collection, {"phash_min_cosine": 0})
    body = client.get(f"/img/duplicates/{collection}", params={"tier": "phash"}).json()
    assert body["phash_min_cosine"] == 0
    pairs = {frozenset(m["id"] for m in g["members"]) for g in body["groups"]}
    assert pairs == copy_pairs | {frozenset((103, 203))}


def test_backfill_resumes_where_it_stopped(client):
    svc = client.services
    rng = np.random.default_rng(9)
    name = unique("bfset")
    folder = svc.settings.data_root / name
    folder.mkdir(parents=True)
    records = [(1 + i, d) for i, d in enumerate(generate_split("valid", 80).jpegs)]
    write_image_tsv(folder / "valid_imgs.tsv", records)
    write_features_jsonl(
        folder / "valid_imgs.img_feat.jsonl",
        "image_id",
        [r[0] for r in records],
        _features(len(records), svc.encoder.dim, rng),
    )
    collection = unique("bf")
    r = client.post("/img/load", json={"dataset": name, "split": "valid", "collection": collection})
    assert wait_job(client, r.json()["job_id"])["state"] == "succeeded"

    class StopAfterOnePage(Counter):
        def advance(self, processed: int = 0) -> None:
            super().advance(processed)
            self.cancel()

    first = backfill_phashes(svc, collection, StopAfterOnePage())
    assert first == {"hashed": phash_backfill.PAGE, "failed": 0, "left": 80 - phash_backfill.PAGE}
    # The job finishes the rest, and only the rest.
    job = wait_job(client, client.post(f"/img/collections/{collection}/phash").json()["job_id"])
    assert (job["state"], job["processed"], job["failed"], job["total"]) == (
        "succeeded",
        80 - phash_backfill.PAGE,
        0,
        80 - phash_backfill.PAGE,
    )
    assert svc.images.count_without_phash(collection) == 0


# --- the job's life -------------------------------------------------------------------------


@pytest.fixture
def blocker(monkeypatch):
    """A job kind that holds the runner's one worker until released, so the next job queues."""
    release = threading.Event()
    monkeypatch.setitem(RUNNERS, "hold", lambda svc, job, progress: release.wait(60) and "released")
    yield release
    release.set()


def test_job_lifecycle_queued_running_replaced_cancelled_resumed(client, added, blocker):
    collection, _ = added
    svc = client.services
    runner = client.app.state.runner
    _compute(client, collection, {"tiers": ["phash"]})  # the listing being replaced below
    other = unique("dupjob")
    client.post("/img/collections", json={"name": other})
    # No listing yet: the first read starts the job; reads while it waits name the same job.
    runner.submit("hold", other, {})
    first = client.get(f"/img/duplicates/{other}")
    assert first.status_code == 202
    job_id = first.json()["job_id"]
    assert client.get(f"/img/duplicates/{other}").json()["job_id"] == job_id
    assert client.get(f"/img/duplicates/{other}", params={"job_id": job_id}).status_code == 202
    conflict = client.post(f"/img/duplicates/{other}")
    assert conflict.status_code == 409 and conflict.json()["error"]["details"]["job"] == job_id
    # Cancelled before it ran: no listing, the next read starts a new job.
    assert client.post(f"/img/jobs/{job_id}/cancel").status_code == 200
    blocker.set()
    assert wait_job(client, job_id)["state"] == "cancelled"
    second = client.get(f"/img/duplicates/{other}")
    assert second.status_code == 202 and second.json()["job_id"] != job_id
    assert wait_job(client, second.json()["job_id"])["state"] == "succeeded"
    listing = client.get(f"/img/duplicates/{other}").json()
    assert listing["job_id"] == second.json()["job_id"]
    assert (listing["total"], listing["running_job_id"]) == (0, None)

    # A listing being recomputed: reads show the old one and name the new job.
    blocker.clear()
    runner.submit("hold", collection, {})
    newer = client.post(f"/img/duplicates/{collection}", json={"tiers": ["phash"]}).json()["job_id"]
    old = client.get(f"/img/duplicates/{collection}").json()
    assert old["running_job_id"] == newer and old["job_id"] != newer
    blocker.set()
    assert wait_job(client, newer)["state"] == "succeeded"
    assert client.get(f"/img/duplicates/{collection}").json()["job_id"] == newer

    # A job interrupted by a restart is resumed and becomes the listing.
    job = svc.jobs.create("duplicates", collection, {"tiers": ["phash"]})
    svc.jobs.finish(job.id, "interrupted", "the server stopped before the job finished; resume it")
    assert client.post(f"/img/jobs/{job.id}/resume").status_code == 200
    assert wait_job(client, job.id)["state"] == "succeeded"
    assert client.get(f"/img/duplicates/{collection}").json()["job_id"] == job.id


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"limit": 0}, 422),
        ({"limit": 101}, 422),
        ({"after": -1}, 422),
        ({"after": 2**63}, 422),
        ({"max_members": 0}, 422),
        ({"max_members": 1001}, 422),
        ({"tier": "exact"}, 422),
        ({"job_id": "x;drop"}, 422),
        ({"job_id": "0123456789abcdef0123456789abcdef0"}, 422),
        ({"job_id": "nosuchlisting"}, 409),
    ],
)
def test_bad_listing_reads_are_4xx(client, added, params, status):
    collection, _ = added
    r = client.get(f"/img/duplicates/{collection}", params=params)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == {422: "invalid_input", 409: "conflict"}[status]


@pytest.mark.parametrize(
    "body",
    [
        {"tiers": []},
        {"tiers": ["exact"]},
        {"tiers": ["phash", "phash", "clip"]},
        {"phash_max_distance": 8},
        {"phash_max_distance": -1},
        {"near_duplicate_threshold": 1.5},
        {"bogus": 1},
    ],
)
def test_bad_listing_requests_are_422(client, added, body):
    collection, _ = added
    r = client.post(f"/img/duplicates/{collection}", json=body)
    assert r.status_code == 422, r.text


def test_unknown_and_invalid_collections(client):
    assert client.get("/img/duplicates/no_such_collection_x").status_code == 404
    assert client.post("/img/duplicates/no_such_collection_x").status_code == 404
    assert client.post("/img/collections/no_such_collection_x/phash").status_code == 404
    assert client.get("/img/duplicates/bad-name").status_code == 400
    assert client.post("/img/duplicates/bad-name").status_code == 400


def test_links_group_by_connected_component_with_the_strongest_tier():
    links = Links()
    links.add_clip(5, 6, 0.97)
    links.add_clip(6, 7, 0.96)
    links.add_phash(1, 2, 4)
    links.add_clip(2, 3, 0.99)
    links.add_phash(1, 2, 2)  # the closer link wins
    links.add_clip(10, 11, 0.955)
    links.add_clip(12, 11, 0.98)
    groups = links.groups()
    assert [(g.group_no, g.tier, [m.image_id for m in g.members]) for g in groups] == [
        (1, "phash", [1, 2, 3]),
        (2, "clip", [5, 6, 7]),
        (3, "clip", [10, 11, 12]),
    ]
    members = {m.image_id: (m.distance, m.score) for m in groups[0].members}
    assert members == {1: (2, None), 2: (2, 0.99), 3: (None, 0.99)}
    assert [m.score for m in groups[2].members] == [0.955, 0.98, 0.98]
