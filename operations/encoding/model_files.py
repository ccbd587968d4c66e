"""Where a Chinese-CLIP model's files are, and what it is, without torch.

Name, architecture and dim of a model are known from cn_clip's tables and
JSON configs; reading them needs neither torch nor cn_clip.clip (whose import
alone costs hundreds of MB of RSS). So command-line work that never encodes (a
load of precomputed features) stays light: `lazy_encoder.LazyClipEncoder`
imports the real encoder (`clip_encoder`) on its first encode. This module
imports neither.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from operations.errors import ServiceError

CONTEXT_LENGTH = 52


class ModelUnavailable(ServiceError):
    """The model's files are not where the settings say (a start-up error)."""

    code = "model_unavailable"


@functools.cache
def cn_clip_dir() -> Path:
    """cn_clip's `clip` package directory, found without importing it (torch)."""
    found = importlib.util.find_spec("cn_clip")
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailable("cn_clip is not installed: pip install -r requirements.txt")
    return Path(list(found.submodule_search_locations)[0]) / "clip"


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from; see `resolve_architecture` for `arch`."""

    name: str = "RN50"
    checkpoint: Path | None = None
    arch: str | None = None
    download_root: Path = Path("./models")
    device: str = "auto"
    half: bool = False
    random_init: bool = False
    seed: int = 0
    text_int8: bool = False
    # ENCODER_BACKEND: "auto" (ONNX Runtime on CPU when its export verifies,
    # else torch), "onnx" (ONNX or a start-up error) or "torch".
    backend: str = "torch"
    onnx_cache_dir: Path | None = None
    # Intra-op threads: text batches of up to 8 texts use `text_threads`,
    # image batches and larger text batches `image_threads`; 0 = every core
    # this process may run on (see `available_cores`).
    text_threads: int = 1
    image_threads: int = 0


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's count.

    In a container or under taskset the affinity is the real budget; os.cpu_count()
    would oversubscribe it.
    """
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # not on Linux
        return max(os.cpu_count() or 1, 1)


def resolve_threads(requested: int) -> int:
    """A thread setting: 0 means every available core, capped by OMP_NUM_THREADS when set.

    Resolved here once, not read back from torch: a pass sets torch's global
    count, so reading it later would depend on what ran before.
    """
    if requested > 0:
        return requested
    cores = available_cores()
    cap = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(cores, int(cap)) if cap.isdigit() and int(cap) > 0 else cores


def resolve_architecture(arch: str) -> dict:
    """Return CLIP(**kwargs) for `arch`.

    `arch` is a JSON file holding the kwargs (our small demo model), or a cn_clip
    struct such as "RN50@RBT3-chinese", or a cn_clip model name ("RN50").
    """
    _, model_info = cn_clip_tables()
    if arch in model_info:
        arch = model_info[arch]["struct"]
    path = Path(arch)
    if path.suffix == ".json":
        if not path.is_file():
            raise ModelUnavailable(f"architecture file not found: {path}")
        info = json.loads(path.read_text(encoding="utf-8"))
    elif "@" in arch:
        vision, text = arch.split("@", 1)
        info = {}
        for part in (vision, text):
            cfg = cn_clip_dir() / "model_configs" / f"{part.replace('/', '-')}.json"
            if not cfg.is_file():
                raise ModelUnavailable(f"unknown cn_clip architecture part {part!r}")
            info.update(json.loads(cfg.read_text(encoding="utf-8")))
    else:
        raise ModelUnavailable(
            f"architecture {arch!r} is neither a .json file, a cn_clip model name nor a 'VISION@TEXT' struct"
        )
    if isinstance(info.get("vision_layers"), str):
        # cn_clip stores ResNet layer counts as a string like "[3,4,6,3]".
        info["vision_layers"] = json.loads(info["vision_layers"])
    return info


@functools.cache
def cn_clip_tables() -> tuple[dict, dict]:
    """cn_clip's `_MODELS` (name -> (hub id, file name)) and `_MODEL_INFO`
    (name -> struct, resolution), read as literals from cn_clip/clip/utils.py:
    importing that module imports torch. A test checks them against the import.
    Should a cn_clip release write them in a way this reading does not follow,
    the module is imported after all (slower and heavier, still right)."""
    found = {}
    try:
        tree = ast.parse((cn_clip_dir() / "utils.py").read_text(encoding="utf-8"))
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                if node.targets[0].id in ("_MODELS", "_MODEL_INFO"):
                    found[node.targets[0].id] = ast.literal_eval(node.value)
    except (OSError, SyntaxError, ValueError):
        found = {}
    if set(found) != {"_MODELS", "_MODEL_INFO"}:
        from cn_clip.clip import utils  # imports torch

        return dict(utils._MODELS), dict(utils._MODEL_INFO)
    return found["_MODELS"], found["_MODEL_INFO"]


def locate_model(spec: ModelSpec) -> tuple[Path | None, str, dict]:
    """(checkpoint or None for random weights, architecture, CLIP kwargs) of
    `spec`, or ModelUnavailable naming the missing file. Reads no weights."""
    checkpoint = spec.checkpoint
    models, _ = cn_clip_tables()
    if checkpoint is None and not spec.random_init:
        if spec.name not in models:
            raise ModelUnavailable(
                f"model {spec.name!r} is not a cn_clip model ({', '.join(models)}); "
                "set MODEL_CHECKPOINT and MODEL_ARCH for a custom model"
            )
        checkpoint = spec.download_root / models[spec.name][1]
        if not checkpoint.is_file():
            raise ModelUnavailable(
                f"checkpoint for {spec.name} not found at {checkpoint}; copy "
                f"{models[spec.name][1]} there (no download is attempted)"
            )
    arch = spec.arch or spec.name
    info = resolve_architecture(arch)
    if spec.random_init:
        return None, arch, info
    if not Path(checkpoint).is_file():
        raise ModelUnavailable(f"checkpoint not found: {checkpoint}")
    return Path(checkpoint), arch, info
