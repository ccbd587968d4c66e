"""The synthetic demo dataset: determinism, Chinese-CLIP layout, honest ground truth."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import demo_generator as g

SIZES = {"train": 300, "valid": 80, "test": 80}
SEED = 123


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    g.generate(out, SEED, SIZES)
    return out


def _files(out: Path) -> list[Path]:
    return sorted(p for split in g.SPLITS for p in g.split_files(out, split))


def test_same_seed_gives_identical_files(demo_dir, tmp_path):
    g.generate(tmp_path, SEED, SIZES)
    pairs = list(zip(_files(demo_dir), _files(tmp_path), strict=True))
    assert len(pairs) == 9
    for a, b in pairs:
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), a.name


def test_other_seed_gives_other_data(demo_dir, tmp_path):
    g.generate(tmp_path, SEED + 1, {"valid": SIZES["valid"]})
    assert (tmp_path / "valid_imgs.tsv").read_bytes() != (demo_dir / "valid_imgs.tsv").read_bytes()


def test_a_split_does_not_depend_on_the_others(demo_dir, tmp_path):
    g.generate(tmp_path, SEED, {"valid": SIZES["valid"]})
    for name in ("valid_imgs.tsv", "valid_texts.jsonl"):
        assert (tmp_path / name).read_bytes() == (demo_dir / name).read_bytes()


def test_ensure_demo_data_only_fills_in_missing_splits(tmp_path):
    sizes = {"valid": 5, "test": 5}
    g.ensure_demo_data(tmp_path, SEED, sizes)
    valid = tmp_path / "valid_imgs.tsv"
    test_texts = tmp_path / "test_texts.jsonl"
    before = valid.stat().st_mtime_ns
    test_texts.unlink()
    g.ensure_demo_data(tmp_path, SEED, sizes)
    assert valid.stat().st_mtime_ns == before
    assert test_texts.is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_ensure_demo_data_replaces_a_stale_split(tmp_path):
    """A split made by another generator version, seed or size is made again."""
    sizes = {"valid": 5}
    g.ensure_demo_data(tmp_path, SEED, sizes)
    valid = tmp_path / "valid_imgs.tsv"
    fresh = valid.read_bytes()
    valid.write_text("1000001\tc3RhbGU=\n", encoding="utf-8")  # as if an older generator had written it
    stamp = tmp_path / "valid_generator.json"
    stamp.write_text(stamp.read_text().replace('"generator_sha256": "', '"generator_sha256": "0'))
    g.ensure_demo_data(tmp_path, SEED, sizes)
    assert valid.read_bytes() == fresh
    g.ensure_demo_data(tmp_path, SEED, {"valid": 6})  # another size
    assert len(valid.read_text().splitlines()) == 6


def test_layout_and_formats(demo_dir):
    for split in g.SPLITS:
        lines = (demo_dir / f"{split}_imgs.tsv").read_text(encoding="utf-8").splitlines()
        assert len(lines) == SIZES[split]
        for line in lines:
            image_id, b64 = line.split("\t")
            assert int(image_id) >= g.SPLIT_ID_BASE[split]
            raw = base64.b64decode(b64, validate=True)
            img = Image.open(io.BytesIO(raw))
            assert img.format == "JPEG" and img.mode == "RGB"
            assert 160 <= img.width <= 224 and img.width == img.height
        raw_text = (demo_dir / f"{split}_texts.jsonl").read_text(encoding="utf-8")
        assert "\\u" not in raw_text  # ensure_ascii=False: Chinese stays readable
        for line in raw_text.splitlines():
            row = json.loads(line)
            assert set(row) == {"text_id", "text", "image_ids"}
            assert isinstance(row["text_id"], int) and isinstance(row["text"], str)
            assert row["image_ids"] and all(isinstance(i, int) for i in row["image_ids"])
            assert row["image_ids"] == sorted(set(row["image_ids"]))


def test_ids_unique_across_splits_and_in_ranges(demo_dir):
    image_ids, text_ids = [], []
    for split in g.SPLITS:
        ids = [iid for iid, _ in g.read_images(demo_dir, split)]
        base = g.SPLIT_ID_BASE[split]
        assert ids == list(range(base, base + SIZES[split]))
        texts = g.read_texts(demo_dir, split)
        assert [t["text_id"] for t in texts] == list(range(base, base + len(texts)))
        # ground truth only points into the same split
        assert {i for t in texts for i in t["image_ids"]} <= set(ids)
        image_ids += ids
        text_ids += [t["text_id"] for t in texts]
    assert len(image_ids) == len(set(image_ids))
    assert len(text_ids) == len(set(text_ids))


def test_jpeg_bytes_unique_across_splits(demo_dir):
    digests = [
        hashlib.sha256(raw).hexdigest() for split in g.SPLITS for _, raw in g.read_images(demo_dir, split)
    ]
    assert len(digests) == sum(SIZES.values())
    assert len(set(digests)) == len(digests)


def test_captions_short_varied_and_cover_every_image(demo_dir):
    for split in g.SPLITS:
        texts = g.read_texts(demo_dir, split)
        assert all(0 < len(t["text"]) <= g.MAX_CAPTION_CHARS for t in texts)
        assert len({t["text"] for t in texts}) == len(texts)
        described = {i for t in texts for i in t["image_ids"]}
        assert described == {iid for iid, _ in g.read_images(demo_dir, split)}
        assert len(texts) >= 2 * SIZES[split]  # several captions per image
    words = "".join(t["text"] for t in g.read_texts(demo_dir, "train"))
    # synonym templates: one thing said more than one way
    assert "正方形" in words and "方块" in words
    assert "爱心" in words and "心形" in words
    assert "左边" in words and "左侧" in words


def test_valid_and_test_hold_combinations_unseen_in_train(demo_dir):
    scenes = {s: g.read_scenes(demo_dir, s) for s in g.SPLITS}
    train_triples = {o.triple() for sc in scenes["train"].values() for o in sc.objects}
    train_signatures = {sc.signature() for sc in scenes["train"].values()}
    held_out = g.held_out_triples(SEED)
    assert held_out and not held_out & train_triples
    for split in ("valid", "test"):
        triples = {o.triple() for sc in scenes[split].values() for o in sc.objects}
        unseen = triples & held_out
        assert len(unseen) >= 5, split
        with_unseen = [sc for sc in scenes[split].values() if {o.triple() for o in sc.objects} & held_out]
        assert len(with_unseen) >= 0.2 * SIZES[split]
        # no valid/test scene repeats a train scene's object layout
        assert not {sc.signature() for sc in scenes[split].values()} & train_signatures


def test_train_families_are_one_change_look_alikes(demo_dir):
    scenes = g.read_scenes(demo_dir, "train")
    families = g.read_families(demo_dir, "train")
    groups: dict[int, list[g.Scene]] = {}
    for iid in sorted(scenes):
        groups.setdefault(families[iid], []).append(scenes[iid])
    assert sum(len(m) > 1 for m in groups.values()) >= 0.8 * len(groups)
    kinds = set()
    for members in groups.values():
        base = members[0]
        for other in members[1:]:
            assert other != base
            assert (other.bg_colour, other.bg_pattern) == (base.bg_colour, base.bg_pattern)
            changed = [(a, b) for a, b in zip(base.objects, other.objects) if a != b]
            assert len(changed) == 1
            a, b = changed[0]
            diff = [f for f in ("shape", "colour", "position", "size") if getattr(a, f) != getattr(b, f)]
            assert len(diff) == 1
            kinds.add(diff[0])
    assert kinds == {"shape", "colour", "position"}
    for split in ("valid", "test"):  # drawn independently
        fams = list(g.read_families(demo_dir, split).values())
        assert len(set(fams)) == len(fams)


# --- ground truth checked by an independent reading of the caption words ---------

_SHAPE_WORDS = sorted(((w, k) for k, ws in g.SHAPES.items() for w in ws), key=lambda x: -len(x[0]))
_POS_WORDS = sorted(((w, k) for k, (_, ws) in g.POSITIONS.items() for w in ws), key=lambda x: -len(x[0]))
_COLOUR_CHARS = {v[0][0]: k for k, v in g.COLOURS.items()}  # 红 -> red
_BG_WORDS = {v[0]: k for k, v in g.BACKGROUNDS.items()}  # 浅蓝色 -> light_blue
_PATTERN_WORDS = {"渐变": "gradient", "条纹": "stripes"}

_BG_RE = re.compile(
    "(?:背景是(纯)?(BG)(渐变|条纹)?|(纯)?(BG)(渐变|条纹)?背景上?)".replace(
        "BG", "|".join(map(re.escape, _BG_WORDS))
    )
)
_OBJ_RE = re.compile(
    "(?:(POS)(?:有|是|画着))?(?:一个)?(?:(大|小)的?)?([COL])色?的?(SHAPE)".replace(
        "POS", "|".join(w for w, _ in _POS_WORDS)
    )
    .replace("COL", "".join(_COLOUR_CHARS))
    .replace("SHAPE", "|".join(w for w, _ in _SHAPE_WORDS))
)


def _parse(text: str):
    """(objects [(shape, colour, position|None, size|None)], bg_colour|None, bg_pattern|None)."""
    bg_colour = bg_pattern = None
    m = _BG_RE.search(text)
    if m:
        solid = m.group(1) or m.group(4)
        bg_colour = _BG_WORDS[m.group(2) or m.group(5)]
        pattern = m.group(3) or m.group(6)
        bg_pattern = "solid" if solid else _PATTERN_WORDS.get(pattern) if pattern else None
        text = text[: m.start()] + "#" + text[m.end() :]
    shape_of = dict(_SHAPE_WORDS)
    pos_of = dict(_POS_WORDS)
    objects = []
    for om in _OBJ_RE.finditer(text):
        pos, size, colour, shape = om.groups()
        objects.append(
            (
                shape_of[shape],
                _COLOUR_CHARS[colour],
                pos_of[pos] if pos else None,
                {"大": "big", "小": "small"}.get(size),
            )
        )
    # nothing left over: every object word was read
    rest = _OBJ_RE.sub("", text)
    assert not any(w in rest for w, _ in _SHAPE_WORDS), (text, rest)
    count = re.search("([两三])个图形", text)
    if count:
        assert {"两": 2, "三": 3}[count.group(1)] == len(objects), text
    return objects, bg_colour, bg_pattern


def _fits(parsed, scene: g.Scene) -> bool:
    objects, bg_colour, bg_pattern = parsed
    if bg_colour is not None and bg_colour != scene.bg_colour:
        return False
    if bg_pattern is not None and bg_pattern != scene.bg_pattern:
        return False
    if len(objects) != len(scene.objects):
        return False
    for perm in itertools.permutations(scene.objects):
        if all(
            f[0] == o.shape and f[1] == o.colour and f[2] in (None, o.position) and f[3] in (None, o.size)
            for f, o in zip(objects, perm)
        ):
            return True
    return False


def test_ground_truth_lists_exactly_the_images_a_caption_describes(demo_dir):
    n_multi = 0
    for split in g.SPLITS:
        scenes = g.read_scenes(demo_dir, split)
        for t in g.read_texts(demo_dir, split):
            parsed = _parse(t["text"])
            assert parsed[0], t
            expected = sorted(iid for iid, sc in scenes.items() if _fits(parsed, sc))
            assert expected == t["image_ids"], (split, t)
            n_multi += len(expected) > 1
    assert n_multi > 0  # some captions honestly fit several images


def test_caption_reader_rejects_a_wrong_caption(demo_dir):
    """The checker above can fail: a caption with a swapped colour fits no longer."""
    scenes = g.read_scenes(demo_dir, "valid")
    t = g.read_texts(demo_dir, "valid")[0]
    scene = scenes[t["image_ids"][0]]
    assert _fits(_parse(t["text"]), scene)
    colour = g.COLOURS[scene.objects[0].colour][0][0]
    other = next(c for c in _COLOUR_CHARS if c != colour and c not in t["text"])
    assert not _fits(_parse(t["text"].replace(colour, other, 1)), scene)


# --- rendering ----------------------------------------------------------------------


def test_render_scene_draws_the_object_where_it_says():
    scene = g.simple_scene("square", "red", "left", bg_colour="light_blue")
    img = np.asarray(g.render_scene(scene, 0), dtype=float)
    side = img.shape[0]
    left = img[side // 2, side // 6]
    right = img[side // 2, 5 * side // 6]
    assert np.abs(left - g.COLOURS["red"][1]).max() < 40
    assert np.abs(right - g.BACKGROUNDS["light_blue"][1]).max() < 40
    # same rng -> same picture; another rng -> jittered picture
    assert g.render_scene(scene, 0).tobytes() == g.render_scene(scene, 0).tobytes()
    assert g.render_scene(scene, 0).tobytes() != g.render_scene(scene, 1).tobytes()


def test_simple_scene_rejects_unknown_words():
    with pytest.raises(ValueError):
        g.simple_scene("circle", "rainbow", "left")
