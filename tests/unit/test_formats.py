"""Chinese-CLIP file formats: round trips, tolerant reading, LMDB compatibility."""

from __future__ import annotations

import base64
import io
import json
import math
import pickle
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from PIL import Image

from datasets.formats import (
    BadRecord,
    FeatureIndex,
    FeatureRecord,
    FormatError,
    ImageRecord,
    TextRecord,
    dataset_paths,
    iter_features,
    iter_image_tsv,
    iter_predictions,
    iter_texts,
    read_predictions,
    write_features_jsonl,
    write_image_tsv,
    write_predictions_jsonl,
    write_texts_jsonl,
)
from datasets.lmdb_io import LmdbImages, build_lmdb, get_lmdb_image, iter_lmdb_images, iter_lmdb_pairs


def image_bytes(color=(200, 30, 30), size=(12, 9), fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def split_bad(records):
    good = [r for r in records if not isinstance(r, BadRecord)]
    bad = [r for r in records if isinstance(r, BadRecord)]
    return good, bad


# -- images tsv ---------------------------------------------------------------


def test_image_tsv_round_trip(tmp_path):
    images = [(7, image_bytes()), (1000001, image_bytes((0, 255, 0), fmt="PNG")), (3, b"\x00\xff raw")]
    path = tmp_path / "valid_imgs.tsv"
    assert write_image_tsv(path, images) == 3
    records = list(iter_image_tsv(path))
    assert all(isinstance(r, ImageRecord) for r in records)
    assert [(r.image_id, r.data) for r in records] == images
    assert [r.line_no for r in records] == [1, 2, 3]
    assert records[0].b64 == base64.b64encode(images[0][1]).decode()


def test_image_tsv_bad_lines_reported_rest_kept(tmp_path):
    data = image_bytes()
    std = base64.b64encode(data).decode()
    # Bytes with '+' and '/' in standard base64 exercise the URL-safe alphabet.
    tricky = bytes([0xFB, 0xFF, 0xFE] * 5)
    urlsafe = base64.urlsafe_b64encode(tricky).decode()
    assert "-" in urlsafe or "_" in urlsafe
    lines = [
        f"1\t{std}",  # 1 good
        "2\tnot*base64!",  # 2 bad base64
        f"x3\t{std}",  # 3 non-int id
        f"4.0\t{std}",  # 4 non-int id
        f"5\t{std}\textra",  # 5 three fields
        "",  # 6 blank: skipped, not an error
        f"6\t{std[:-3]}",  # 7 truncated base64 (bad padding)
        f"7\t{urlsafe}",  # 8 good, URL-safe alphabet (cn_clip accepts it)
        "8\t",  # 9 empty base64
        f"9\t{std}",  # 10 good
    ]
    path = tmp_path / "imgs.tsv"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"10\t\xff\xfe\n")  # 11 invalid UTF-8
    good, bad = split_bad(list(iter_image_tsv(path)))
    assert [(r.image_id, r.line_no) for r in good] == [(1, 1), (7, 8), (9, 10)]
    assert good[0].data == data and good[1].data == tricky
    # Kept in the standard alphabet, which every decoder reads.
    assert good[1].b64 == base64.b64encode(tricky).decode()
    assert [b.line_no for b in bad] == [2, 3, 4, 5, 7, 9, 11]
    by_line = {b.line_no: b for b in bad}
    assert "base64" in by_line[2].reason and by_line[2].record_id == 2
    assert "not an integer" in by_line[3].reason and by_line[3].record_id is None
    assert "2 tab-separated" in by_line[5].reason
    assert by_line[7].record_id == 6


# -- texts jsonl ----------------------------------------------------------------


def test_texts_round_trip(tmp_path):
    texts = [
        (1, "一只红色的圆形", [10, 11]),
        (2, 'quote "x" 和 \t tab', []),
        TextRecord(0, 3, "蓝色“方块”", [12]),
    ]
    path = tmp_path / "valid_texts.jsonl"
    assert write_texts_jsonl(path, texts) == 3
    # cn_clip reads it with json.loads per line; our reader agrees.
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert raw[0] == {"text_id": 1, "text": "一只红色的圆形", "image_ids": [10, 11]}
    records = list(iter_texts(path))
    assert [(r.text_id, r.text, r.image_ids) for r in records] == [
        (1, "一只红色的圆形", [10, 11]),
        (2, 'quote "x" 和 \t tab', []),
        (3, "蓝色“方块”", [12]),
    ]


def test_texts_bad_lines(tmp_path):
    lines = [
        '{"text_id": 1, "text": "好", "image_ids": [1]}',
        '{"text_id": 2, "text": "坏", "image_ids": [1]',  # broken JSON
        '{"text_id": "3", "text": "x", "image_ids": [1]}',  # string id
        '{"text_id": 4, "text": 5, "image_ids": [1]}',  # text not a string
        '{"text_id": 5, "text": "x", "image_ids": 1}',  # not a list
        '{"text_id": 6, "text": "x", "image_ids": [1, "2"]}',  # non-int image id
        "[1, 2]",  # not an object
        '{"text_id": true, "text": "x", "image_ids": []}',  # bool is not an id
        '{"text_id": 9, "text": "末", "image_ids": [2, 3]}',
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    good, bad = split_bad(list(iter_texts(path)))
    assert [(r.text_id, r.line_no) for r in good] == [(1, 1), (9, 9)]
    assert [b.line_no for b in bad] == [2, 3, 4, 5, 6, 7, 8]
    assert [b.record_id for b in bad] == [None, None, 4, 5, 6, None, None]


# -- feature files --------------------------------------------------------------


def test_features_round_trip_exact_float32(tmp_path):
    rng = np.random.default_rng(0)
    m = rng.standard_normal((5, 16)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    ids = [5, 1, 99, 3, 2**40]
    path = tmp_path / "valid_imgs.img_feat.jsonl"
    assert write_features_jsonl(path, "image_id", ids, m, chunk=2) == 5
    recs = list(iter_features(path, "image_id", expected_dim=16))
    assert [r.id for r in recs] == ids
    got = np.stack([r.vector for r in recs])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, m)
    # Chinese-CLIP's make_topk_predictions reads it with json.loads.
    obj = json.loads(path.read_text().splitlines()[0])
    assert set(obj) == {"image_id", "feature"} and obj["image_id"] == 5
    np.testing.assert_array_equal(np.array(obj["feature"], np.float32), m[0])


def test_features_bad_lines(tmp_path):
    good = [0.6, 0.8, 0.0]
    lines = [
        json.dumps({"text_id": 1, "feature": good}),
        json.dumps({"text_id": 2, "feature": [0.6, 0.8]}),  # wrong dim
        json.dumps({"text_id": 3, "feature": [float("nan"), 0, 0]}),  # NaN (not even JSON)
        json.dumps({"text_id": 4, "feature": [1e39, 0, 0]}),  # inf in float32
        json.dumps({"text_id": "5", "feature": good}),  # string id
        json.dumps({"text_id": 6, "feature": [0.6, "a", 0]}),  # non-number
        json.dumps({"text_id": 7}),  # no feature
        "{broken",
        json.dumps({"text_id": 9, "feature": good}),
    ]
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(lines) + "\n")
    good_recs, bad = split_bad(list(iter_features(path, "text_id", expected_dim=3)))
    assert [(r.id, r.line_no) for r in good_recs] == [(1, 1), (9, 9)]
    assert [b.line_no for b in bad] == [2, 3, 4, 5, 6, 7, 8]
    assert "dimension 2, expected 3" in bad[0].reason and bad[0].record_id == 2
    assert "NaN or infinity" in bad[2].reason and bad[2].record_id == 4
    # Without expected_dim a short vector is fine.
    assert sum(isinstance(r, FeatureRecord) for r in iter_features(path, "text_id")) == 3


def test_feature_index(tmp_path):
    rng = np.random.default_rng(1)
    m = rng.standard_normal((6, 4)).astype(np.float32)
    path = tmp_path / "f.jsonl"
    with open(path, "w") as f:
        # cn_clip's own spacing (json.dumps), a later duplicate, a broken line, a bad-dim line.
        f.writelines(
            json.dumps({"image_id": i, "feature": row.tolist()}) + "\n" for i, row in zip([30, 10, 20], m[:3])
        )
        f.write(json.dumps({"feature": m[3].tolist(), "image_id": 10}) + "\n")  # dup of 10 (line 4)
        f.write("not json at all\n")  # line 5
        f.write("\n")  # line 6 blank
        f.write(json.dumps({"image_id": 40, "feature": [1.0, 2.0]}) + "\n")  # line 7 bad dim
        f.write(json.dumps({"feature": m[5].tolist(), "image_id": 50}) + "\n")  # line 8 id last
    with FeatureIndex(path, "image_id", expected_dim=4) as index:
        assert index.ids().tolist() == [10, 20, 30, 40, 50]
        assert len(index) == 5 and 20 in index and 11 not in index
        rec = index.get(10)
        assert isinstance(rec, FeatureRecord) and rec.line_no == 2
        np.testing.assert_allclose(rec.vector, m[1], rtol=1e-6)
        np.testing.assert_allclose(index.get(50).vector, m[5], rtol=1e-6)
        assert index.get(12345) is None
        bad40 = index.get(40)
        assert isinstance(bad40, BadRecord) and bad40.line_no == 7 and "dimension" in bad40.reason
        assert [(b.line_no, b.record_id) for b in index.bad] == [(4, 10), (5, None)]
        many = index.get_many([30, 10, 999])
        assert set(many) == {30, 10}
        np.testing.assert_allclose(many[30].vector, m[0], rtol=1e-6)


@pytest.mark.parametrize("span", [1, 1 << 20])
def test_feature_index_get_many_reads_runs_of_lines_as_get_does(tmp_path, monkeypatch, span):
    """get_many reads adjacent lines in one call (runs cut at gaps, at blank or
    broken lines and at the span limit); every answer equals get's."""
    import datasets.formats as formats

    monkeypatch.setattr(formats, "_MAX_READ_SPAN", span)
    rng = np.random.default_rng(2)
    path = tmp_path / "f.jsonl"
    lines = [json.dumps({"image_id": i, "feature": rng.standard_normal(8).tolist()}) for i in range(100, 160)]
    lines[7] = "{broken"
    lines[20] = json.dumps({"image_id": 120, "feature": [1.0]})  # wrong dim
    lines.insert(30, "")
    path.write_text("\n".join(lines) + "\n")
    with FeatureIndex(path, "image_id", expected_dim=8) as index:
        wanted = [int(i) for i in rng.permutation(np.arange(95, 165))] + [130, 130]
        many = index.get_many(wanted)
        assert set(many) == {i for i in range(100, 160) if i != 107}
        for i, rec in many.items():
            one = index.get(i)
            assert type(rec) is type(one) and rec.line_no == one.line_no
            if isinstance(rec, FeatureRecord):
                assert rec.id == i and np.array_equal(rec.vector, one.vector)
        assert isinstance(many[120], BadRecord) and "dimension" in many[120].reason
        assert index.get_many([]) == {} and index.get_many([1, 2]) == {}
        # Ids no int64 can hold are absent, as get says, not an OverflowError.
        assert set(index.get_many([1 << 63, -(1 << 63) - 1, 100])) == {100}
        assert index.get(1 << 63) is None


# -- predictions ----------------------------------------------------------------


def test_predictions_round_trip(tmp_path):
    path = tmp_path / "p.jsonl"
    preds = [(1, [5, 4, 3], [0.9, 0.8, 0.7]), (2, [1, 2, 3], None)]
    write_predictions_jsonl(path, preds)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0] == {"text_id": 1, "image_ids": [5, 4, 3], "scores": [0.9, 0.8, 0.7]}
    assert lines[1] == {"text_id": 2, "image_ids": [1, 2, 3]}
    got = read_predictions(path)
    assert got[1].ids == [5, 4, 3] and got[1].scores == [0.9, 0.8, 0.7] and got[2].scores is None
    write_predictions_jsonl(path, {7: [1, 2]}, query_key="image_id", result_key="text_ids")
    assert json.loads(path.read_text()) == {"image_id": 7, "text_ids": [1, 2]}


def test_read_predictions_strict_and_tolerant(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"text_id": 1, "image_ids": [1]}\n{"text_id": 2, "image_ids": ["a"]}\n'
        '{"text_id": 3, "image_ids": [1], "scores": [1, 2]}\n'
    )
    with pytest.raises(FormatError, match="line 2"):
        read_predictions(path)
    bad: list = []
    got = read_predictions(path, strict=False, bad=bad)
    assert list(got) == [1] and [b.line_no for b in bad] == [2, 3]
    assert sum(isinstance(r, BadRecord) for r in iter_predictions(path)) == 2


def test_dataset_paths(tmp_path):
    p = dataset_paths(tmp_path, "valid")
    assert p.imgs_tsv == tmp_path / "valid_imgs.tsv"
    assert p.texts_jsonl == tmp_path / "valid_texts.jsonl"
    assert p.img_feat == tmp_path / "valid_imgs.img_feat.jsonl"
    assert p.txt_feat == tmp_path / "valid_texts.txt_feat.jsonl"
    assert p.predictions == tmp_path / "valid_predictions.jsonl"
    assert p.lmdb_imgs == tmp_path / "lmdb" / "valid" / "imgs"
    assert p.lmdb_pairs == tmp_path / "lmdb" / "valid" / "pairs"
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(ValueError):
            dataset_paths(tmp_path, bad)


# -- LMDB -------------------------------------------------------------------------


def _lmdb_items(path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = dict(txn.cursor())
    env.close()
    return items


def _make_split(d, split="valid"):
    images = [(1000001 + i, image_bytes((i * 20, 100, 200 - i * 10))) for i in range(12)]
    write_image_tsv(d / f"{split}_imgs.tsv", images)
    texts = [
        (1, "红色圆形", [1000001, 1000002]),
        (2, "蓝色“方块”", [1000003]),
        (3, "空", []),
        (4, "英文 ABC", [1000004]),
    ]
    write_texts_jsonl(d / f"{split}_texts.jsonl", texts)
    return images, texts


def test_lmdb_byte_compatible_with_cn_clip_builder(tmp_path):
    images, _ = _make_split(tmp_path)
    report = build_lmdb(tmp_path, "valid")
    assert report.num_images == 12 and report.num_samples == 4 and not report.bad_images
    ref_dir = tmp_path / "ref_lmdb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cn_clip.preprocess.build_lmdb_dataset",
            "--data_dir",
            str(tmp_path),
            "--splits",
            "valid",
            "--lmdb_dir",
            str(ref_dir),
        ],
        check=True,
        capture_output=True,
    )
    for db in ("imgs", "pairs"):
        ours = _lmdb_items(tmp_path / "lmdb" / "valid" / db)
        theirs = _lmdb_items(ref_dir / "valid" / db)
        assert ours == theirs, db
    # And our reader reads both, in cn_clip eval's key order.
    recs = list(iter_lmdb_images(ref_dir / "valid"))
    assert sorted((r.image_id, r.data) for r in recs) == sorted(images)
    assert [r.line_no for r in recs] == list(range(1, 13))
    assert [r.image_id for r in recs] == sorted(
        r.image_id for r in recs
    )  # same width: lexicographic = numeric
    pairs = list(iter_lmdb_pairs(ref_dir / "valid" / "pairs", trusted=True))
    assert pairs == [
        (1000001, 1, "红色圆形"),
        (1000002, 1, "红色圆形"),
        (1000003, 2, "蓝色“方块”"),
        (1000004, 4, "英文 ABC"),
    ]


def test_lmdb_bad_lines_duplicates_and_rebuild(tmp_path):
    data = image_bytes()
    b64 = base64.b64encode(data).decode()
    (tmp_path / "test_imgs.tsv").write_text(f"5\t{b64}\nbad\tline\n5\t{b64}\n6\t{b64}\n")
    (tmp_path / "test_texts.jsonl").write_text('{"text_id": 1, "text": "a", "image_ids": [5, 6]}\n{oops\n')
    report = build_lmdb(tmp_path, "test")
    assert report.num_images == 2 and report.num_samples == 2
    assert [b.line_no for b in report.bad_images] == [2, 3] and "duplicate" in report.bad_images[1].reason
    assert [b.line_no for b in report.bad_texts] == [2]
    items = _lmdb_items(tmp_path / "lmdb" / "test" / "imgs")
    assert items == {b"5": b64.encode(), b"6": b64.encode(), b"num_images": b"2"}
    # A rebuild from a smaller tsv leaves no stale key behind.
    (tmp_path / "test_imgs.tsv").write_text(f"7\t{b64}\n")
    build_lmdb(tmp_path, "test")
    assert _lmdb_items(tmp_path / "lmdb" / "test" / "imgs") == {b"7": b64.encode(), b"num_images": b"1"}
    rec = get_lmdb_image(tmp_path / "lmdb" / "test" / "imgs", 7)
    assert isinstance(rec, ImageRecord) and rec.data == data
    assert get_lmdb_image(tmp_path / "lmdb" / "test", 5) is None
    with LmdbImages(tmp_path / "lmdb" / "test") as imgs:
        assert len(imgs) == 1


def test_lmdb_pairs_need_trust_and_refuse_globals(tmp_path):
    env = lmdb.open(str(tmp_path / "pairs"), map_size=1 << 24)

    class Evil:
        def __reduce__(self):
            return (math.factorial, (5,))

    with env.begin(write=True) as txn:
        txn.put(b"0", pickle.dumps((1, 2, "ok")))
        txn.put(b"1", pickle.dumps(Evil()))
        txn.put(b"2", pickle.dumps([1, 2, 3]))
        txn.put(b"num_samples", b"3")
    env.close()
    with pytest.raises(PermissionError):
        list(iter_lmdb_pairs(tmp_path / "pairs"))
    out = list(iter_lmdb_pairs(tmp_path / "pairs", trusted=True))
    assert out[0] == (1, 2, "ok")
    assert isinstance(out[1], BadRecord) and "refusing" in out[1].reason
    assert isinstance(out[2], BadRecord)


def test_lmdb_bad_entries_reported(tmp_path):
    env = lmdb.open(str(tmp_path / "imgs"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"1", base64.b64encode(b"img"))
        txn.put(b"2", b"%%%")
        txn.put(b"abc", base64.b64encode(b"img"))
        txn.put(b"num_images", b"3")
    env.close()
    recs = list(iter_lmdb_images(tmp_path / "imgs"))
    assert [type(r).__name__ for r in recs] == ["ImageRecord", "BadRecord", "BadRecord"]
    assert recs[1].record_id == 2 and recs[1].line_no == 2


def test_stored_images_decode_in_either_alphabet():
    """Rows loaded before loads kept the standard alphabet may hold URL-safe base64."""
    from operations.images import stored_image_bytes

    data = bytes([0xFB, 0xFF, 0xFE] * 50) + image_bytes()
    assert stored_image_bytes(base64.b64encode(data).decode()) == data
    assert stored_image_bytes(base64.urlsafe_b64encode(data).decode()) == data
    with pytest.raises(ValueError, match="base64"):
        stored_image_bytes("abc*")
