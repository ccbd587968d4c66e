"""Deterministic synthetic demo dataset: coloured shapes with Chinese captions.

Writes Chinese-CLIP's own layout (see GUIDE.md section 2) into an output dir:

- ``${split}_imgs.tsv``      ``image_id<TAB>base64 of the JPEG bytes``
- ``${split}_texts.jsonl``   ``{"text_id", "text", "image_ids"}`` (ensure_ascii=False)
- ``${split}_scenes.jsonl``  our own metadata: the scene behind each image
  (objects, background, family), for training and sanity checks such as
  image-to-image tests; Chinese-CLIP's tools ignore it.

Ids: image ids and text ids both start at ``SPLIT_ID_BASE[split]``
(train 1, valid 1_000_001, test 2_000_001), so they are unique across splits;
a split therefore holds fewer than 1_000_000 images and texts.

A scene is 1-3 objects (shape, colour, size) on distinct cells of a 3x3 grid,
over a coloured background (solid, gradient or stripes). Every caption names
every object's colour and shape (and so the object count); it may add
positions, sizes and the background. A caption's ``image_ids`` are *all* the
images of its split whose scene satisfies every fact the caption states, so
the ground truth is exact even when several images fit one caption.
Position words mean grid cells: 左边 is the middle-left cell, 左上角 the
top-left one, 中间 the centre, and so on (see ``POSITIONS``).

Unseen combinations: a seeded set of (shape, colour, position) triples never
occurs in train but is planted in about a third of valid/test scenes, and
every full scene signature (the set of (shape, colour, position) triples) is
assigned to exactly one split by a seeded hash, so no valid or test scene
has the same object layout as any train scene.

Train scenes come in families of ``TRAIN_FAMILY_SIZE`` look-alikes (a base
scene and variants that change one object's shape, colour or position), so
the trainer can put hard negatives in one batch. Valid and test scenes are
drawn independently (each image its own family).

Every random choice comes from a generator seeded by (seed, split), so the
same seed gives byte-identical files, and one split can be generated alone.
Small jitter (position, size, rotation, colour, pixel noise) makes every
image's JPEG bytes distinct.

CLI: ``python -m datasets.demo_generator --out datasets/data/demo``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from datasets.text_images import write_text_images

SPLITS = ("train", "valid", "test")
SPLIT_ID_BASE = {"train": 1, "valid": 1_000_001, "test": 2_000_001}
DEFAULT_SIZES = {"train": 4000, "valid": 1000, "test": 1000}
DEFAULT_SEED = 20240601
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "demo"
IMAGE_SIZE = 192
JPEG_QUALITY = 85
MAX_CAPTION_CHARS = 50
# Share of valid/test scenes that contain a (shape, colour, position) triple
# never seen in train.
HELD_OUT_SCENE_SHARE = 0.35
HELD_OUT_TRIPLE_SHARE = 0.08
# Train scenes come in families of look-alikes (see `_variant`).
TRAIN_FAMILY_SIZE = 3

# --- vocabulary: key -> (canonical Chinese name, synonyms used in captions) --

SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("圆形", "圆", "圆圈"),
    "square": ("正方形", "方块", "方形"),
    "triangle": ("三角形", "三角"),
    "star": ("星形", "星星", "五角星"),
    "diamond": ("菱形",),
    "crescent": ("月牙", "月牙形", "弯月"),
    "cross": ("十字形", "十字"),
    "heart": ("心形", "爱心"),
}

COLOURS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "red": ("红色", (215, 30, 35)),
    "green": ("绿色", (35, 160, 60)),
    "blue": ("蓝色", (30, 75, 215)),
    "yellow": ("黄色", (245, 210, 25)),
    "purple": ("紫色", (135, 50, 175)),
    "orange": ("橙色", (245, 130, 25)),
    "black": ("黑色", (20, 20, 20)),
    "white": ("白色", (248, 248, 248)),
    "pink": ("粉色", (245, 135, 185)),
}

BACKGROUNDS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "light_gray": ("浅灰色", (200, 200, 200)),
    "dark_gray": ("深灰色", (75, 75, 75)),
    "light_blue": ("浅蓝色", (175, 205, 240)),
    "beige": ("米色", (238, 226, 196)),
    "light_green": ("浅绿色", (185, 228, 185)),
}

BG_PATTERNS: dict[str, str] = {"solid": "纯色", "gradient": "渐变", "stripes": "条纹"}

# Grid cell (column, row) and the words that name it.
POSITIONS: dict[str, tuple[tuple[int, int], tuple[str, ...]]] = {
    "top_left": ((0, 0), ("左上角",)),
    "top": ((1, 0), ("上方", "上面", "顶部")),
    "top_right": ((2, 0), ("右上角",)),
    "left": ((0, 1), ("左边", "左侧")),
    "center": ((1, 1), ("中间", "中央", "正中间")),
    "right": ((2, 1), ("右边", "右侧")),
    "bottom_left": ((0, 2), ("左下角",)),
    "bottom": ((1, 2), ("下方", "下面", "底部")),
    "bottom_right": ((2, 2), ("右下角",)),
}

SIZES: dict[str, tuple[str, tuple[float, float]]] = {
    # radius as a fraction of the image side; the ranges are far apart so
    # "大"/"小" stay true after jitter.
    "big": ("大", (0.115, 0.135)),
    "small": ("小", (0.072, 0.084)),
}

COUNT_WORDS = {1: "一", 2: "两", 3: "三"}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    position: str
    size: str = "big"

    def triple(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.position)

    def to_json(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "position": self.position, "size": self.size}


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    bg_colour: str = "light_gray"
    bg_pattern: str = "solid"

    def signature(self) -> tuple[tuple[str, str, str], ...]:
        """The object layout, ignoring sizes and background."""
        return tuple(sorted(o.triple() for o in self.objects))

    def to_json(self) -> dict:
        return {
            "objects": [o.to_json() for o in self.objects],
            "bg_colour": self.bg_colour,
            "bg_pattern": self.bg_pattern,
        }

    @classmethod
    def from_json(cls, data: dict) -> Scene:
        return cls(
            objects=tuple(SceneObject(**o) for o in data["objects"]),
            bg_colour=data["bg_colour"],
            bg_pattern=data["bg_pattern"],
        )


@dataclass(frozen=True)
class ObjectFact:
    """What a caption says about one object; None = not stated."""

    shape: str
    colour: str
    position: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class CaptionFacts:
    """Everything a caption states. Object count is always exact."""

    objects: tuple[ObjectFact, ...]
    bg_colour: str | None = None
    bg_pattern: str | None = None


def scene_matches(scene: Scene, facts: CaptionFacts) -> bool:
    """True when every fact of the caption holds for the scene."""
    if len(scene.objects) != len(facts.objects):
        return False
    if facts.bg_colour is not None and facts.bg_colour != scene.bg_colour:
        return False
    if facts.bg_pattern is not None and facts.bg_pattern != scene.bg_pattern:
        return False
    # (shape, colour) is unique inside a scene and inside a caption, so the
    # only possible pairing of caption objects with scene objects is by it.
    by_key = {(o.shape, o.colour): o for o in scene.objects}
    for fact in facts.objects:
        obj = by_key.get((fact.shape, fact.colour))
        if obj is None:
            return False
        if fact.position is not None and fact.position != obj.position:
            return False
        if fact.size is not None and fact.size != obj.size:
            return False
    return True


def _object_key_set(objects: Iterable[SceneObject | ObjectFact]) -> frozenset:
    return frozenset((o.shape, o.colour) for o in objects)


# --- scene sampling ----------------------------------------------------------


def _contrast_ok(colour: str, bg_colour: str) -> bool:
    return _CONTRAST_OK[(colour, bg_colour)]


# Objects too close in colour to the background would be invisible at the
# model's low input resolution (white on light grey, black on dark grey).
_CONTRAST_OK = {
    (c, b): float(np.linalg.norm(np.subtract(COLOURS[c][1], BACKGROUNDS[b][1]))) > 100.0
    for c in COLOURS
    for b in BACKGROUNDS
}


def held_out_triples(seed: int = DEFAULT_SEED) -> frozenset[tuple[str, str, str]]:
    """(shape, colour, position) triples that never occur in train."""
    rng = np.random.default_rng([seed, 7919])
    triples = [(s, c, p) for s in SHAPES for c in COLOURS for p in POSITIONS]
    n = round(len(triples) * HELD_OUT_TRIPLE_SHARE)
    picked = rng.choice(len(triples), size=n, replace=False)
    return frozenset(triples[i] for i in sorted(picked))


def signature_split(signature: Sequence[tuple[str, str, str]], seed: int = DEFAULT_SEED) -> str:
    """The one split a scene signature may appear in (seeded hash, 80/10/10)."""
    text = f"{seed}|" + ";".join(",".join(t) for t in signature)
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 20
    if bucket < 16:
        return "train"
    return "valid" if bucket < 18 else "test"


def _sample_scene(
    rng: np.random.Generator, split: str, seed: int, held_out: frozenset, held_out_list: list
) -> Scene:
    shapes, colours, positions = list(SHAPES), list(COLOURS), list(POSITIONS)
    bgs, patterns, sizes = list(BACKGROUNDS), list(BG_PATTERNS), list(SIZES)
    while True:
        u = rng.random()
        n = 1 if u < 0.25 else 2 if u < 0.65 else 3
        bg_colour = _pick(rng, bgs)
        u = rng.random()
        bg_pattern = patterns[0] if u < 0.5 else patterns[1] if u < 0.75 else patterns[2]
        objects: list[SceneObject] = []
        plant = split != "train" and rng.random() < HELD_OUT_SCENE_SHARE
        if plant:
            s, c, p = held_out_list[int(rng.integers(len(held_out_list)))]
            objects.append(SceneObject(s, c, p, _pick(rng, sizes)))
        cells = [p for p in positions if p not in {o.position for o in objects}]
        rng.shuffle(cells)
        while len(objects) < n:
            obj = SceneObject(
                shape=_pick(rng, shapes),
                colour=_pick(rng, colours),
                position=cells.pop(),
                size=_pick(rng, sizes),
            )
            if (obj.shape, obj.colour) in {(o.shape, o.colour) for o in objects}:
                cells.append(obj.position)
                continue
            objects.append(obj)
        scene = Scene(tuple(objects), bg_colour, bg_pattern)
        if not _scene_ok(scene, split, seed, held_out):
            continue
        if plant and not {o.triple() for o in objects} & held_out:
            continue
        return scene


def _scene_ok(scene: Scene, split: str, seed: int, held_out: frozenset) -> bool:
    objects = scene.objects
    if len({(o.shape, o.colour) for o in objects}) != len(objects):
        return False
    if len({o.position for o in objects}) != len(objects):
        return False
    if not all(_contrast_ok(o.colour, scene.bg_colour) for o in objects):
        return False
    if split == "train" and {o.triple() for o in objects} & held_out:
        return False
    return signature_split(scene.signature(), seed) == split


def _variant(
    scene: Scene, rng: np.random.Generator, split: str, seed: int, held_out: frozenset
) -> Scene | None:
    """`scene` with one change: an object's shape (most often), colour or position.

    Train scenes come in such families, so a training batch holds look-alike
    images whose captions differ in one word: without them colour and place
    alone tell the images of a random batch apart, and the model never has to
    learn shapes.
    """
    for _attempt in range(30):
        i = int(rng.integers(len(scene.objects)))
        obj = scene.objects[i]
        u = rng.random()
        if u < 0.6:
            new = replace(obj, shape=_pick(rng, [k for k in SHAPES if k != obj.shape]))
        elif u < 0.8:
            new = replace(obj, colour=_pick(rng, [k for k in COLOURS if k != obj.colour]))
        else:
            taken = {o.position for o in scene.objects}
            new = replace(obj, position=_pick(rng, [k for k in POSITIONS if k not in taken]))
        objects = list(scene.objects)
        objects[i] = new
        candidate = Scene(tuple(objects), scene.bg_colour, scene.bg_pattern)
        if _scene_ok(candidate, split, seed, held_out):
            return candidate
    return None


# --- rendering -----------------------------------------------------------------


def _regular_polygon(n: int, r: float, rot: float) -> list[tuple[float, float]]:
    return [
        (r * math.cos(rot + 2 * math.pi * k / n), r * math.sin(rot + 2 * math.pi * k / n)) for k in range(n)
    ]


def _shape_points(shape: str, r: float, rot: float) -> list[tuple[float, float]]:
    """Outline centred at (0, 0), y pointing down."""
    up = -math.pi / 2
    if shape == "circle":
        return _regular_polygon(64, r, 0.0)
    if shape == "square":
        return _regular_polygon(4, r * 1.3, math.pi / 4 + rot)
    if shape == "diamond":
        pts = _regular_polygon(4, r * 1.1, up + rot)
        return [(x * 0.75, y) for x, y in pts]
    if shape == "triangle":
        pts = _regular_polygon(3, r * 1.2, up + rot)
        return [(x, y + r * 0.2) for x, y in pts]
    if shape == "crescent":
        # outer disc minus a smaller disc shifted right: opens to the right, like "C"
        big_r, small_r, d = r * 1.15, r * 1.15 * 0.85, r * 1.15 * 0.45
        x = (big_r**2 - small_r**2 + d**2) / (2 * d)
        t0 = math.atan2(math.sqrt(big_r**2 - x**2), x)
        p0 = math.atan2(math.sqrt(big_r**2 - x**2), x - d)
        outer = [t0 + (2 * math.pi - 2 * t0) * k / 40 for k in range(41)]
        inner = [2 * math.pi - p0 - (2 * math.pi - 2 * p0) * k / 40 for k in range(41)]
        pts = [(big_r * math.cos(a), big_r * math.sin(a)) for a in outer]
        pts += [(d + small_r * math.cos(a), small_r * math.sin(a)) for a in inner]
        c, s = math.cos(rot), math.sin(rot)
        return [(x * c - y * s + r * 0.15, x * s + y * c) for x, y in pts]
    if shape == "star":
        pts = []
        for k in range(10):
            rr = r * 1.2 if k % 2 == 0 else r * 0.5
            a = up + rot + math.pi * k / 5
            pts.append((rr * math.cos(a), rr * math.sin(a)))
        return pts
    if shape == "cross":
        a, b = r * 1.1, r * 0.38
        pts = [
            (-b, -a),
            (b, -a),
            (b, -b),
            (a, -b),
            (a, b),
            (b, b),
            (b, a),
            (-b, a),
            (-b, b),
            (-a, b),
            (-a, -b),
            (-b, -b),
        ]
        c, s = math.cos(rot), math.sin(rot)
        return [(x * c - y * s, x * s + y * c) for x, y in pts]
    if shape == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 14.0, (y + 2.5) * r / 14.0))
        c, s = math.cos(rot), math.sin(rot)
        return [(x * c - y * s, x * s + y * c) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}")


def _jitter_colour(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(min(255, max(0, v + int(x))) for v, x in zip(rgb, d))  # type: ignore[return-value]


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    if side not in _GRIDS:
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
        _GRIDS[side] = (yy, xx)
    return _GRIDS[side]


_NOISE: dict[int, np.ndarray] = {}


def _noise_bank(side: int) -> np.ndarray:
    if side not in _NOISE:
        _NOISE[side] = (
            np.random.default_rng(12345).normal(0.0, 3.0, (2 * side, 2 * side, 3)).astype(np.float32)
        )
    return _NOISE[side]


def _background(scene: Scene, side: int, rng: np.random.Generator) -> np.ndarray:
    """Float32 (side, side, 3) background, without noise."""
    base = np.array(_jitter_colour(BACKGROUNDS[scene.bg_colour][1], rng, 8), dtype=np.float32)
    # Pattern shades move away from the extremes so they stay visible.
    shift = 38.0 if base.mean() < 128 else -38.0
    yy, xx = _grid(side)
    if scene.bg_pattern == "solid":
        return np.broadcast_to(base, (side, side, 3)).copy()
    if scene.bg_pattern == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        proj = xx * math.cos(angle) + yy * math.sin(angle)
        lo, hi = float(proj.min()), float(proj.max())
        weight = (proj - lo) * (1.0 / max(hi - lo, 1e-6))
    elif scene.bg_pattern == "stripes":
        period = rng.uniform(0.07, 0.11)
        phase = rng.uniform(0, 1)
        coord = yy if rng.random() < 0.5 else xx
        weight = (((coord / period + phase) % 1.0) < 0.5).astype(np.float32) * 0.6
    else:
        raise ValueError(f"unknown background pattern {scene.bg_pattern!r}")
    return base[None, None, :] + weight[:, :, None] * shift


def render_scene(
    scene: Scene, rng: np.random.Generator | int | None = 0, image_size: int = IMAGE_SIZE
) -> Image.Image:
    """Draw `scene` as an RGB PIL image; `rng` (or an int seed) drives the jitter."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    side = image_size
    arr = _background(scene, side, rng)
    # Sensor-like noise: a random window of a fixed noise bank (drawing fresh
    # normals for every pixel dominated the generation time).
    bank = _noise_bank(side)
    oy, ox = (int(v) for v in rng.integers(0, side, size=2))
    arr += bank[oy : oy + side, ox : ox + side]
    img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    scale = 2  # draw masks at 2x and reduce: smooth edges, cheap
    big = side * scale
    cell = big / 3.0
    for obj in scene.objects:
        (col, row), _ = POSITIONS[obj.position]
        lo, hi = SIZES[obj.size][1]
        r = rng.uniform(lo, hi) * big
        cx = (col + 0.5) * cell + rng.uniform(-0.02, 0.02) * big
        cy = (row + 0.5) * cell + rng.uniform(-0.02, 0.02) * big
        # Squares and diamonds only rotate a little so one never looks like the other.
        max_rot = 0.12 if obj.shape in ("square", "diamond") else 0.25
        rot = rng.uniform(-max_rot, max_rot)
        pts = _shape_points(obj.shape, r, rot)
        # Work on the object's bounding box only, aligned to the 2x grid.
        x0 = max(0, int(cx + min(x for x, _ in pts)) // scale - 1)
        y0 = max(0, int(cy + min(y for _, y in pts)) // scale - 1)
        x1 = min(side, int(cx + max(x for x, _ in pts)) // scale + 2)
        y1 = min(side, int(cy + max(y for _, y in pts)) // scale + 2)
        mask = Image.new("L", ((x1 - x0) * scale, (y1 - y0) * scale), 0)
        ox, oy = cx - x0 * scale, cy - y0 * scale
        ImageDraw.Draw(mask).polygon([(ox + x, oy + y) for x, y in pts], fill=255)
        colour = _jitter_colour(COLOURS[obj.colour][1], rng, 12)
        img.paste(colour, (x0, y0, x1, y1), mask.reduce(scale))
    return img


def simple_scene(
    shape: str,
    colour: str,
    position: str = "center",
    size: str = "big",
    bg_colour: str = "light_gray",
    bg_pattern: str = "solid",
    others: Sequence[tuple[str, str, str]] = (),
) -> Scene:
    """A scene from keys, e.g. ``simple_scene("circle", "red", "left")``.

    `others` adds more (shape, colour, position) objects (small size).
    """
    for s, c, p in [(shape, colour, position), *others]:
        if s not in SHAPES or c not in COLOURS or p not in POSITIONS:
            raise ValueError(f"unknown shape/colour/position {(s, c, p)!r}")
    if size not in SIZES or bg_colour not in BACKGROUNDS or bg_pattern not in BG_PATTERNS:
        raise ValueError("unknown size, background colour or pattern")
    objects = [SceneObject(shape, colour, position, size)]
    objects += [SceneObject(s, c, p, "small") for s, c, p in others]
    return Scene(tuple(objects), bg_colour, bg_pattern)


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --- captions --------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _object_phrase(fact: ObjectFact, rng: np.random.Generator, with_count: bool) -> str:
    colour = COLOURS[fact.colour][0]
    if rng.random() < 0.3:
        colour = colour[:-1]  # 红色 -> 红
    shape = _pick(rng, SHAPES[fact.shape])
    de = "的" if rng.random() < 0.4 and colour.endswith("色") else ""
    size = ""
    if fact.size is not None:
        size = SIZES[fact.size][0] + ("的" if de == "" and rng.random() < 0.5 else "")
    count = "一个" if with_count else ""
    return f"{count}{size}{colour}{de}{shape}"


def _background_phrase(facts: CaptionFacts, rng: np.random.Generator) -> tuple[str, str]:
    """(phrase used as prefix, phrase used as suffix); says no more than `facts`."""
    colour = BACKGROUNDS[facts.bg_colour][0]  # type: ignore[index]
    if facts.bg_pattern is None:
        head, tail = colour, ""
    elif facts.bg_pattern == "solid":
        head, tail = "纯" + colour, ""
    else:
        head, tail = colour, BG_PATTERNS[facts.bg_pattern]
    prefix = f"{head}{tail}背景上"
    suffix = _pick(rng, [f"背景是{head}{tail}", f"{head}{tail}背景"])
    return prefix, suffix


def _positional_caption(facts: CaptionFacts, rng: np.random.Generator) -> str:
    parts = []
    verbs = ["有", "是", "有", "画着"]
    for fact in facts.objects:
        pos = _pick(rng, POSITIONS[fact.position][1])  # type: ignore[index]
        verb = _pick(rng, verbs)
        parts.append(f"{pos}{verb}{_object_phrase(fact, rng, with_count=verb != '是' or rng.random() < 0.5)}")
    body = "，".join(parts)
    if facts.bg_colour is None:
        return body
    prefix, suffix = _background_phrase(facts, rng)
    return f"{prefix}，{body}" if rng.random() < 0.4 else f"{body}，{suffix}"


def _list_caption(facts: CaptionFacts, rng: np.random.Generator) -> str:
    phrases = [_object_phrase(f, rng, with_count=len(facts.objects) == 1) for f in facts.objects]
    if len(phrases) == 1:
        body = _pick(rng, ["{}", "图中有{}", "画面里是{}", "只有{}"]).format(phrases[0])
    else:
        joined = "、".join(phrases[:-1]) + _pick(rng, ["和", "与", "、"]) + phrases[-1]
        n = COUNT_WORDS[len(phrases)]
        body = _pick(
            rng, [f"{n}个图形：{joined}", f"图中有{n}个图形：{joined}", f"画面里有{joined}", f"{joined}"]
        )
    if facts.bg_colour is None:
        return body
    _, suffix = _background_phrase(facts, rng)
    return f"{body}，{suffix}"


def _facts_for(scene: Scene, rng: np.random.Generator, positional: bool) -> CaptionFacts:
    order = list(scene.objects)
    if positional and rng.random() < 0.6:
        # reading order: top to bottom, left to right
        order.sort(key=lambda o: (POSITIONS[o.position][0][1], POSITIONS[o.position][0][0]))
    else:
        rng.shuffle(order)
    with_size = rng.random() < 0.35
    objects = tuple(
        ObjectFact(o.shape, o.colour, o.position if positional else None, o.size if with_size else None)
        for o in order
    )
    with_bg = rng.random() < 0.45
    bg_pattern = scene.bg_pattern if with_bg and rng.random() < 0.6 else None
    return CaptionFacts(objects, scene.bg_colour if with_bg else None, bg_pattern)


def _shorten(facts: CaptionFacts) -> CaptionFacts:
    """Drop optional facts (background, then sizes) to fit the length limit."""
    if facts.bg_colour is not None:
        return CaptionFacts(facts.objects, None, None)
    return CaptionFacts(tuple(ObjectFact(f.shape, f.colour, f.position, None) for f in facts.objects))


def make_captions(scene: Scene, rng: np.random.Generator, n: int = 3) -> list[tuple[str, CaptionFacts]]:
    """`n` different captions of `scene`, each with the facts it states."""
    out: list[tuple[str, CaptionFacts]] = []
    kinds = ["positional", "positional", "list"] if n >= 3 else ["positional", "list"][:n]
    kinds = kinds + [_pick(rng, ["positional", "list"]) for _ in range(n - len(kinds))]
    for kind in kinds:
        for _attempt in range(20):
            facts = _facts_for(scene, rng, positional=kind == "positional")
            render = _positional_caption if kind == "positional" else _list_caption
            text = render(facts, rng)
            while len(text) > MAX_CAPTION_CHARS:
                facts = _shorten(facts)
                text = render(facts, rng)
            if text not in {t for t, _ in out}:
                out.append((text, facts))
                break
    return out


# --- splits --------------------------------------------------------------------------


@dataclass
class SplitData:
    split: str
    image_ids: list[int]
    scenes: list[Scene]
    jpegs: list[bytes]
    texts: list[dict] = field(default_factory=list)  # text_id, text, image_ids
    families: list[int] = field(default_factory=list)  # look-alike group of each image


def generate_split(
    split: str,
    n_images: int,
    seed: int = DEFAULT_SEED,
    captions_per_image: int = 3,
    image_size: int = IMAGE_SIZE,
) -> SplitData:
    """Generate one split in memory; independent of the other splits' sizes."""
    if split not in SPLIT_ID_BASE:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not 0 <= n_images < 1_000_000:
        raise ValueError("a split holds 0..999999 images")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    held_out = held_out_triples(seed)
    held_out_list = sorted(held_out)
    base = SPLIT_ID_BASE[split]
    scenes: list[Scene] = []
    families: list[int] = []
    n_families = 0
    while len(scenes) < n_images:
        family = [_sample_scene(rng, split, seed, held_out, held_out_list)]
        if split == "train":
            for _ in range(TRAIN_FAMILY_SIZE - 1):
                variant = _variant(family[0], rng, split, seed, held_out)
                if variant is not None and variant not in family:
                    family.append(variant)
        family = family[: n_images - len(scenes)]
        families += [n_families] * len(family)
        n_families += 1
        scenes += family
    image_ids = [base + i for i in range(n_images)]
    jpegs = [encode_jpeg(render_scene(scene, rng, image_size)) for scene in scenes]

    by_keys: dict[frozenset, list[int]] = defaultdict(list)
    for idx, scene in enumerate(scenes):
        by_keys[_object_key_set(scene.objects)].append(idx)

    texts: list[dict] = []
    seen: set[str] = set()
    for scene in scenes:
        for text, facts in make_captions(scene, rng, captions_per_image):
            if text in seen:  # same words already listed with every image they fit
                continue
            seen.add(text)
            matches = [
                image_ids[j]
                for j in by_keys[_object_key_set(facts.objects)]
                if scene_matches(scenes[j], facts)
            ]
            texts.append({"text_id": base + len(texts), "text": text, "image_ids": matches})
    if len(texts) >= 1_000_000:
        raise ValueError("too many texts for the split's id range")
    return SplitData(split, image_ids, scenes, jpegs, texts, families)


def write_split(data: SplitData, out_dir: Path) -> None:
    """Write the split's tsv, jsonl and scene metadata files into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Write to temporary names and rename, so a killed run never leaves a
    # half file that ensure_demo_data would take for a finished one.
    files = {
        f"{data.split}_imgs.tsv": "".join(
            f"{iid}\t{base64.b64encode(jpg).decode('ascii')}\n"
            for iid, jpg in zip(data.image_ids, data.jpegs)
        ),
        f"{data.split}_texts.jsonl": "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in data.texts),
        f"{data.split}_scenes.jsonl": "".join(
            json.dumps({"image_id": iid, "family": fam, **s.to_json()}, ensure_ascii=False) + "\n"
            for iid, fam, s in zip(data.image_ids, data.families, data.scenes)
        ),
    }
    for name, content in files.items():
        tmp = out_dir / (name + ".tmp")
        tmp.write_text(content, encoding="utf-8", newline="\n")
        tmp.replace(out_dir / name)


def split_files(out_dir: Path, split: str) -> list[Path]:
    return [
        out_dir / f"{split}_imgs.tsv",
        out_dir / f"{split}_texts.jsonl",
        out_dir / f"{split}_scenes.jsonl",
    ]


def _stamp_path(out_dir: Path, split: str) -> Path:
    return out_dir / f"{split}_generator.json"


def _stamp(split: str, n: int, seed: int) -> dict:
    """What made a split: a split left by an older version of this generator
    (or another seed or size) is stale, and training on it silently gives
    another model than the committed one."""
    source = Path(__file__).read_bytes()
    return {"split": split, "images": n, "seed": seed, "generator_sha256": hashlib.sha256(source).hexdigest()}


def _is_current(out_dir: Path, split: str, n: int, seed: int) -> bool:
    if not all(p.is_file() for p in split_files(out_dir, split)):
        return False
    try:
        return json.loads(_stamp_path(out_dir, split).read_text()) == _stamp(split, n, seed)
    except (OSError, ValueError):
        return False


def generate(
    out_dir: Path | str = DEFAULT_OUT,
    seed: int = DEFAULT_SEED,
    sizes: dict[str, int] | None = None,
    verbose: bool = False,
) -> dict[str, SplitData]:
    """Generate and write every split named in `sizes` (default: all three)."""
    out_dir = Path(out_dir)
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    result = {}
    for split, n in sizes.items():
        t0 = time.perf_counter()
        data = generate_split(split, n, seed)
        write_split(data, out_dir)
        _stamp_path(out_dir, split).write_text(json.dumps(_stamp(split, n, seed)) + "\n")
        result[split] = data
        if verbose:
            print(
                f"{split}: {len(data.image_ids)} images, {len(data.texts)} texts "
                f"in {time.perf_counter() - t0:.1f}s -> {out_dir}",
                file=sys.stderr,
            )
    return result


def ensure_demo_data(
    out_dir: Path | str = DEFAULT_OUT,
    seed: int = DEFAULT_SEED,
    sizes: dict[str, int] | None = None,
    verbose: bool = False,
) -> Path:
    """Generate the splits whose files are missing or were made by another
    version of this generator, seed or size; return `out_dir`."""
    out_dir = Path(out_dir)
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    missing = {s: n for s, n in sizes.items() if not _is_current(out_dir, s, n, seed)}
    if missing:
        generate(out_dir, seed, missing, verbose)
    return out_dir


# --- readers (small helpers for scripts and tests) -----------------------------------


def read_images(out_dir: Path | str, split: str) -> list[tuple[int, bytes]]:
    """(image_id, JPEG bytes) pairs of a split's tsv."""
    rows = []
    with open(Path(out_dir) / f"{split}_imgs.tsv", encoding="utf-8") as fh:
        for line in fh:
            iid, b64 = line.rstrip("\n").split("\t")
            rows.append((int(iid), base64.b64decode(b64)))
    return rows


def read_texts(out_dir: Path | str, split: str) -> list[dict]:
    with open(Path(out_dir) / f"{split}_texts.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_scenes(out_dir: Path | str, split: str) -> dict[int, Scene]:
    with open(Path(out_dir) / f"{split}_scenes.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {r["image_id"]: Scene.from_json(r) for r in rows}


def read_families(out_dir: Path | str, split: str) -> dict[int, int]:
    """image_id -> family (look-alike group; every valid/test image is its own)."""
    with open(Path(out_dir) / f"{split}_scenes.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {r["image_id"]: r["family"] for r in rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train", type=int, default=DEFAULT_SIZES["train"])
    parser.add_argument("--valid", type=int, default=DEFAULT_SIZES["valid"])
    parser.add_argument("--test", type=int, default=DEFAULT_SIZES["test"])
    parser.add_argument(
        "--if-missing", action="store_true", help="only generate splits that are missing or stale"
    )
    args = parser.parse_args(argv)
    sizes = {"train": args.train, "valid": args.valid, "test": args.test}
    if args.if_missing:
        ensure_demo_data(args.out, args.seed, sizes, verbose=True)
    else:
        generate(args.out, args.seed, sizes, verbose=True)
    # Images with Chinese text (price tags, a phone number, a shop sign) for the OCR demo.
    write_text_images(Path(args.out) / "text_images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
