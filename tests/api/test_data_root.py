"""The data root is sealed: the server reads only files whose real path lies under DATA_ROOT.

Dataset directories, split names, every file a load opens and every file of a folder
add; with `..`, absolute paths, symlinked directories and files, and a symlink put in
place after the request was checked (the opened file itself is checked).
Milvus Lite + SQLite (the embedded default).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from operations.data_root import check_under, opened_under, read_under
from operations.errors import BadRequest
from operations.ingest import add_folder
from operations.load import load_split
from operations.progress import Counter
from tests.stack import jpeg, make_services, make_settings, tiny_encoder, unique, wait_job, write_dataset


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("root")
    settings = make_settings(tmp)
    svc = make_services(settings)
    outside = tmp / "outside"
    write_dataset(outside / "secret", "valid", 5, tiny_encoder().dim, seed=3)
    (outside / "photos").mkdir()
    (outside / "photos" / "secret.jpg").write_bytes(jpeg(4040))
    with TestClient(create_app(settings, svc)) as c:
        c.services = svc
        c.outside = outside
        c.root = settings.data_root
        yield c


def _count(client, collection: str) -> int:
    r = client.get(f"/img/collections/{collection}/count")
    return r.json()["images"] if r.status_code == 200 else 0


@pytest.mark.parametrize("split", ["..", ".", "../valid", "/etc/passwd", "a/b", ".hidden"])
def test_a_split_is_a_name_not_a_path(lite, split):
    write_dataset(lite.root / "named", "valid", 3, tiny_encoder().dim)
    r = lite.post("/img/load", json={"dataset": "named", "split": split, "collection": unique("s")})
    assert r.status_code == 422, r.text
    assert "split" in r.json()["error"]["message"]
    assert not [j for j in lite.get("/img/jobs").json() if j["params"].get("split") == split]


@pytest.mark.parametrize("dataset", ["..", "../outside/secret", "/etc", "named/../../outside/secret", ""])
def test_dataset_paths_outside_the_root_are_400(lite, dataset):
    before = len(lite.get("/img/jobs").json())
    r = lite.post("/img/load", json={"dataset": dataset, "split": "valid", "collection": unique("d")})
    assert r.status_code in (400, 422), r.text
    assert len(lite.get("/img/jobs").json()) == before


# Found by schemathesis: a 300-character dataset name made the first stat raise ENAMETOOLONG (500).
@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/img/load", {"split": "valid", "collection": "x_long"}),
        ("/img/calibrate", {"split": "valid", "model": "tiny"}),
    ],
)
def test_a_name_longer_than_the_file_system_allows_is_400(lite, route, body):
    name = "Ṱo̺ invoke" * 30  # well past 255 bytes in one path component
    r = lite.post(route, json={**body, "dataset": name})
    assert r.status_code == 400, r.text
    assert "longer than a file name" in r.json()["error"]["message"]


def test_absolute_path_to_the_outside_dataset_is_400(lite):
    r = lite.post(
        "/img/load", json={"dataset": str(lite.outside / "secret"), "split": "valid", "collection": "x_abs"}
    )
    assert r.status_code == 400 and "outside the data root" in r.json()["error"]["message"]


def test_a_symlinked_dataset_directory_pointing_outside_is_400(lite):
    link = lite.root / "linked_ds"
    link.symlink_to(lite.outside / "secret", target_is_directory=True)
    r = lite.post("/img/load", json={"dataset": "linked_ds", "split": "valid", "collection": unique("l")})
    assert r.status_code == 400, r.text


def test_a_symlinked_tsv_pointing_outside_is_not_read(lite):
    ds = lite.root / "tsvlink"
    ds.mkdir()
    (ds / "valid_imgs.tsv").symlink_to(lite.outside / "secret" / "valid_imgs.tsv")
    collection = unique("t")
    r = lite.post("/img/load", json={"dataset": "tsvlink", "split": "valid", "collection": collection})
    if r.status_code == 202:
        job = wait_job(lite, r.json()["job_id"])
        assert job["state"] == "failed" and "outside the data root" in job["message"], job
    else:
        assert r.status_code == 400, r.text
    assert _count(lite, collection) == 0


def test_a_symlinked_features_file_pointing_outside_is_not_read(lite):
    ds = lite.root / "featlink"
    write_dataset(ds, "valid", 5, tiny_encoder().dim, seed=3)
    (ds / "valid_imgs.img_feat.jsonl").unlink()
    (ds / "valid_imgs.img_feat.jsonl").symlink_to(lite.outside / "secret" / "valid_imgs.img_feat.jsonl")
    collection = unique("f")
    r = lite.post("/img/load", json={"dataset": "featlink", "split": "valid", "collection": collection})
    if r.status_code == 202:
        job = wait_job(lite, r.json()["job_id"])
        assert job["state"] == "failed" and "outside the data root" in job["message"], job
    else:
        assert r.status_code == 400, r.text
    assert _count(lite, collection) == 0


def test_a_symlink_inside_the_root_pointing_inside_is_fine(lite):
    write_dataset(lite.root / "real_ds", "valid", 4, tiny_encoder().dim, seed=8)
    (lite.root / "alias_ds").symlink_to(lite.root / "real_ds", target_is_directory=True)
    collection = unique("a")
    r = lite.post("/img/load", json={"dataset": "alias_ds", "split": "valid", "collection": collection})
    assert r.status_code == 202, r.text
    assert wait_job(lite, r.json()["job_id"])["state"] == "succeeded"
    assert _count(lite, collection) == 4


def test_folder_add_skips_symlinked_files_and_directories_pointing_outside(lite):
    collection = unique("fold")
    assert lite.post("/img/collections", json={"name": collection}).status_code == 201
    folder = lite.root / "photos"
    folder.mkdir()
    (folder / "mine.jpg").write_bytes(jpeg(1))
    (folder / "theirs.jpg").symlink_to(lite.outside / "photos" / "secret.jpg")
    (folder / "sub").symlink_to(lite.outside / "photos", target_is_directory=True)
    r = lite.post(f"/img/images/{collection}/folder", json={"folder": "photos"})
    assert r.status_code == 202, r.text
    job = wait_job(lite, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert _count(lite, collection) == 1
    outside_items = [f for f in job["failures"] if "outside the data root" in f["reason"]]
    assert outside_items, job["failures"]
    r = lite.post(f"/img/images/{collection}/folder", json={"folder": "../outside/photos"})
    assert r.status_code == 400
    (lite.root / "photolink").symlink_to(lite.outside / "photos", target_is_directory=True)
    assert lite.post(f"/img/images/{collection}/folder", json={"folder": "photolink"}).status_code == 400


# -- a symlink put in place after the check -------------------------------------------


def test_opened_under_checks_the_opened_file_not_the_name(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    inside = root / "a.txt"
    inside.write_bytes(b"inside")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    assert check_under(root, inside) == inside.resolve()
    # The name now points outside: the check done earlier does not let it through.
    inside.unlink()
    inside.symlink_to(secret)
    with pytest.raises(BadRequest, match="outside the data root"):
        with opened_under(root, inside):
            pass
    with pytest.raises(BadRequest, match="outside the data root"):
        read_under(root, inside, 1000)
    # And a file swapped for a symlink after it was opened is still the file that was checked.
    inside.unlink()
    inside.write_bytes(b"inside")
    with opened_under(root, inside) as readable:
        inside.unlink()
        inside.symlink_to(secret)
        assert Path(readable).read_bytes() == b"inside"


def test_a_load_whose_tsv_became_a_symlink_after_the_request_was_checked(lite):
    ds = lite.root / "swapped"
    write_dataset(ds, "valid", 5, tiny_encoder().dim, seed=3)
    checked_dir = check_under(lite.root, ds)  # what the route checked
    os.replace(ds / "valid_imgs.tsv", ds / "old.tsv")
    (ds / "valid_imgs.tsv").symlink_to(lite.outside / "secret" / "valid_imgs.tsv")
    collection = unique("sw")
    with pytest.raises(BadRequest, match="outside the data root"):
        load_split(lite.services, collection, checked_dir, "valid", Counter(), data_root=lite.root)
    assert _count(lite, collection) == 0


def test_a_folder_file_that_became_a_symlink_after_the_check(lite):
    collection = unique("fsw")
    assert lite.post("/img/collections", json={"name": collection}).status_code == 201
    folder = lite.root / "swapfolder"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(11))
    (folder / "b.jpg").write_bytes(jpeg(12))
    checked = check_under(lite.root, folder)
    (folder / "b.jpg").unlink()
    (folder / "b.jpg").symlink_to(lite.outside / "photos" / "secret.jpg")
    progress = Counter()
    counts = add_folder(lite.services, collection, checked, progress, data_root=lite.root)
    assert counts["added"] == 1 and counts["failed"] == 1, counts
    assert "outside the data root" in progress.failures[0][1]


# -- calibration reads a labelled split the same way ----------------------------------


@pytest.mark.parametrize("split", ["..", ".", "../valid"])
def test_a_calibration_split_is_a_name_not_a_path(lite, split):
    write_dataset(lite.root / "calnamed", "valid", 3, tiny_encoder().dim)
    r = lite.post("/img/calibrate", json={"dataset": "calnamed", "split": split})
    assert r.status_code == 422, r.text


def test_a_calibration_whose_texts_file_points_outside_is_not_read(lite):
    ds = lite.root / "caltexts"
    write_dataset(ds, "valid", 5, tiny_encoder().dim, seed=3)
    secret = lite.outside / "secret" / "valid_texts.jsonl"
    secret.write_text('{"text_id": 1, "text": "秘密", "image_ids": [1]}\n')
    (ds / "valid_texts.jsonl").symlink_to(secret)
    collection = unique("cal")
    assert lite.post("/img/collections", json={"name": collection}).status_code == 201
    r = lite.post("/img/calibrate", json={"dataset": "caltexts", "split": "valid", "collection": collection})
    assert r.status_code == 202, r.text
    job = wait_job(lite, r.json()["job_id"])
    assert job["state"] == "failed" and "outside the data root" in job["message"], job
