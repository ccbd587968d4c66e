"""Export a loaded cn_clip model's towers to ONNX, cache them, and verify them against torch.

Rules:
- The towers are exported from the very model object the torch encoder
  serves, as `encode_text` and `encode_image` themselves: the text graph
  builds the attention mask from the pad id (0), runs BERT, takes the [CLS]
  position (index 0) and applies `text_projection`, exactly as cn_clip does,
  except that BERT's last layer is computed for [CLS] alone, the only
  position read (operations.encoding.cls_text: the same arithmetic for it,
  about 28% less work for RN50's 3-layer tower). A hand-written graph that
  skips the mask or pools another position looks plausible and is wrong; the
  torch encoder keeps cn_clip's own `encode_text`, the reference every export
  is verified against.
- Both inputs have a dynamic batch axis; the text input also a dynamic length
  axis, so a batch is only as wide as its longest text (never padded to 52).
- Exporter: torch's TorchScript-based exporter (`dynamo=False`). Both it and
  the dynamo exporter gave graphs equal to torch here; the TorchScript one
  needs no extra packages (onnxscript), exports RN50 in seconds rather than
  tens of seconds, and takes dynamic axes by name. The probe verification
  below is what makes either acceptable.
- Files are cached in `<cache dir>/<model>-<key>/`, the key hashing the
  checkpoint's sha256 (or the seed of a random-init model), the resolved
  architecture, EXPORTER_VERSION, the opset and the torch version. A folder is
  complete only once its `meta.json` exists (written last, the folder renamed
  into place): an interrupted export leaves no half folder behind.
- Every export, fresh or cached, is verified on a fixed probe set before it
  is used: each vector's cosine to torch's >= MIN_COSINE (int8 tower:
  INT8_MIN_COSINE to torch float32). A cached export that fails is exported
  again once; a fresh one that fails raises `ExportFailed` with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cn_clip.clip.model import CLIP
from PIL import Image

from operations.encoding.base import l2_normalise
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.cls_text import encode_text_cls_only, supports_cls_only
from operations.encoding.model_files import ModelSpec, locate_model

log = logging.getLogger(__name__)

# Bump when the exported graphs change (wrapper, opset, export options): old
# cache folders are then ignored.
EXPORTER_VERSION = 2  # 2: the text tower's last layer for [CLS] only (cls_text)
OPSET = 17
MIN_COSINE = 0.9999
# int8 is an approximation the operator opts into; this bound catches a broken
# quantisation (a wrong graph gives cosines far below), not the expected error.
INT8_MIN_COSINE = 0.99

TEXT_FILE = "text.onnx"
TEXT_INT8_FILE = "text.int8.onnx"
IMAGE_FILE = "image.onnx"
META_FILE = "meta.json"

# Probe texts: 1 character up to the 52-token context, Latin, digits and
# punctuation, run alone and as mixed-length batches (padding inside a batch).
PROBE_TEXTS = [
    "猫",
    "红色",
    "一只黑色的猫",
    "左边有一个红色的圆形",
    "Apple 手机 iPhone 15，价格 5999 元！",
    "一只在草地上奔跑的小狗，旁边有一个蓝色的球，远处是一片森林",
    "“引号”里的字和（括号）、逗号，句号。问号？感叹号！",
    "这是一张照片：" + "很长的描述" * 8 + "结束",  # 49 characters: 51 tokens
    "五" * 50,  # exactly 52 tokens with [CLS] and [SEP]
]
PROBE_TEXT_BATCHES = [[t] for t in PROBE_TEXTS[:3]] + [PROBE_TEXTS[:5], PROBE_TEXTS]


class ExportFailed(Exception):
    """ONNX export, loading or verification did not succeed; the message says why in one line."""


def probe_images(resolution: int) -> list[Image.Image]:
    """Deterministic synthetic images: flat, a gradient of odd size, noise (squashed like real ones)."""
    rng = np.random.default_rng(20261202)
    x = np.linspace(0, 255, 97, dtype=np.float32)
    grad = np.stack([np.tile(x, (61, 1)), np.tile(x[::-1], (61, 1)), np.full((61, 97), 128.0)], axis=-1)
    return [
        Image.new("RGB", (resolution, resolution), (200, 30, 30)),
        Image.fromarray(grad.astype(np.uint8)),
        Image.fromarray(rng.integers(0, 256, (40, 150, 3), dtype=np.uint8)),
    ]


@dataclass
class Reference:
    """Torch's normalised probe outputs: each text batch, the first image alone, the others as a batch."""

    texts: list[np.ndarray]
    image_one: np.ndarray
    image_batch: np.ndarray


def _image_batches(resolution: int) -> tuple[list[Image.Image], list[Image.Image]]:
    images = probe_images(resolution)
    return images[:1], images[1:]


def torch_reference(encoder: ClipEncoder, texts: bool = True, images: bool = True) -> Reference:
    """Probe outputs of the torch encoder's float32 towers (parts left out are empty)."""
    if encoder.text_int8:
        raise ValueError("the reference must come from the float32 text tower")
    one, batch = _image_batches(encoder.image_resolution)
    empty = np.zeros((0, encoder.dim), np.float32)
    return Reference(
        texts=[encoder.encode_texts(b) for b in PROBE_TEXT_BATCHES] if texts else [],
        image_one=encoder.encode_images(one) if images else empty,
        image_batch=encoder.encode_images(batch) if images else empty,
    )


def _worst(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("-inf")
    cos = np.sum(l2_normalise(a) * l2_normalise(b), axis=1)
    return float(np.nan_to_num(cos, nan=-1.0).min()) if len(cos) else 1.0


def verify(encoder, reference: Reference, text_min: float = MIN_COSINE, images: bool = True) -> dict:
    """Compare `encoder` (ONNX) with torch's `reference`; ExportFailed names the worst case."""
    worst_text, where = 1.0, ""
    for batch, ref in zip(PROBE_TEXT_BATCHES, reference.texts, strict=True):
        got = encoder.encode_texts(batch)
        if got.shape != ref.shape or got.dtype != np.float32:
            raise ExportFailed(f"text tower returned {got.dtype} {got.shape}, torch {ref.dtype} {ref.shape}")
        cos = _worst(got, ref)
        if cos < worst_text:
            worst_text, where = cos, f"batch of {len(batch)}, longest {max(map(len, batch))} chars"
    if worst_text < text_min:
        raise ExportFailed(f"text cosine to torch {worst_text:.6f} < {text_min} ({where})")
    if not images:
        return {"text_min_cosine": worst_text}
    one, several = _image_batches(encoder.image_resolution)
    worst_image = min(
        _worst(encoder.encode_images(one), reference.image_one),
        _worst(encoder.encode_images(several), reference.image_batch),
    )
    if worst_image < MIN_COSINE:
        raise ExportFailed(f"image cosine to torch {worst_image:.6f} < {MIN_COSINE}")
    return {"text_min_cosine": worst_text, "image_min_cosine": worst_image}


# --- cache key ------------------------------------------------------------


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_folder(spec: ModelSpec, cache_dir: Path) -> tuple[Path, dict]:
    """The cache folder of `spec` and the identity it was keyed by."""
    checkpoint, arch, info = locate_model(spec)
    weights = f"random-init seed {spec.seed}" if checkpoint is None else f"sha256 {file_sha256(checkpoint)}"
    identity = {
        "weights": weights,
        "architecture": info,
        "exporter_version": EXPORTER_VERSION,
        "opset": OPSET,
        "torch": torch.__version__.split("+")[0],
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name)[:40] or "model"
    return Path(cache_dir) / f"{label}-{key}", identity


# --- export -----------------------------------------------------------------


class _TextTower(torch.nn.Module):
    def __init__(self, model: CLIP, cls_only: bool = True) -> None:
        super().__init__()
        self.model = model
        self.cls_only = cls_only and supports_cls_only(model)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if self.cls_only:
            return encode_text_cls_only(self.model, text)
        return self.model.encode_text(text)


class _ImageTower(torch.nn.Module):
    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image)


@contextlib.contextmanager
def _quiet_export():
    # The TorchScript exporter warns about its deprecation and about traced
    # shape arithmetic, and ORT's quantiser logs every tensor on the root
    # logger at INFO; the probe verification is the check that matters.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_text_tower(encoder: ClipEncoder, path: Path, cls_only: bool = True) -> None:
    """Write `encoder`'s float32 text tower to `path` (cls_only=False: cn_clip's `encode_text`
    as published, every position through the last layer; bench/bench_text_tower.py compares)."""
    text = encoder.tokenize(["一只黑色的猫在草地上", "红色"])
    # Traced with batch 2 and 12 tokens: a size-1 axis could be folded into the graph.
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(
            _TextTower(encoder.model, cls_only).eval(),
            (text,),
            str(path),
            input_names=["text"],
            output_names=["features"],
            dynamic_axes={"text": {0: "batch", 1: "length"}, "features": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def export_towers(encoder: ClipEncoder, folder: Path) -> None:
    """Write TEXT_FILE and IMAGE_FILE for `encoder`'s float32 model into `folder`."""
    model = encoder.model
    if encoder.text_int8 or encoder.half:
        raise ExportFailed("the torch model is not float32 (TEXT_INT8 or HALF_PRECISION applied first)")
    was_device = next(model.parameters()).device
    model.to("cpu").eval()
    # Traced with batch 2: a size-1 axis could be folded into the graph.
    image = encoder.preprocess_images(probe_images(encoder.image_resolution)[:2])
    # The wrappers must be in eval mode: the exporter restores the module's
    # training flag afterwards, and a fresh nn.Module is in training mode,
    # which would put the served model's BatchNorm layers into training.
    try:
        export_text_tower(encoder, folder / TEXT_FILE)
        with _quiet_export(), torch.no_grad():
            torch.onnx.export(
                _ImageTower(model).eval(),
                (image,),
                str(folder / IMAGE_FILE),
                input_names=["image"],
                output_names=["features"],
                dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        model.eval().to(was_device)


def quantise_text(folder: Path) -> Path:
    """Dynamic int8 quantisation of the text tower's MatMul/Gemm weights (per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = folder / TEXT_INT8_FILE
    if target.is_file():
        return target
    tmp = folder / f".{TEXT_INT8_FILE}.{os.getpid()}.tmp"
    try:
        with _quiet_export():
            quantize_dynamic(
                folder / TEXT_FILE,
                tmp,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


# --- the whole step -----------------------------------------------------------


Threads = tuple[int | None, int | None]


def _open(encoder: ClipEncoder, text: Path, image: Path, threads: Threads, int8: bool):
    from operations.encoding.onnx_encoder import OnnxClipEncoder

    try:
        return OnnxClipEncoder(encoder, text, image, threads[0], threads[1], text_int8=int8)
    except Exception as exc:  # noqa: BLE001 (ORT raises its own types for a bad file)
        reason = f"{type(exc).__name__}: {exc}"
        raise ExportFailed(f"ONNX Runtime cannot load {text.parent.name}: {reason}") from None


def _verified(encoder: ClipEncoder, folder: Path, reference: Reference, int8: bool, threads: Threads):
    """Open the towers in `folder` and verify them: float32 strictly, then the int8 text tower."""
    onnx = _open(encoder, folder / TEXT_FILE, folder / IMAGE_FILE, threads, False)
    report = verify(onnx, reference)
    if int8:
        try:
            text = quantise_text(folder)
        except Exception as exc:  # noqa: BLE001 (onnx / ORT quantisation errors)
            raise ExportFailed(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from None
        onnx = _open(encoder, text, folder / IMAGE_FILE, threads, True)
        checked = verify(onnx, reference, INT8_MIN_COSINE, images=False)
        report["int8_text_min_cosine"] = checked["text_min_cosine"]
    return onnx, report


def onnx_encoder_for(
    encoder: ClipEncoder,
    spec: ModelSpec,
    cache_dir: Path,
    int8: bool = False,
    text_threads: int | None = None,
    image_threads: int | None = None,
    exporter: Callable[[ClipEncoder, Path], None] | None = None,
):
    """An `OnnxClipEncoder` over `encoder`'s model, exported once and cached, verified now.

    Raises ExportFailed (one line) when no verified export can be had.
    """
    started = time.perf_counter()
    try:
        folder, identity = cache_folder(spec, cache_dir)
    except OSError as exc:
        raise ExportFailed(f"cannot read the checkpoint to key the cache: {exc}") from None
    threads: Threads = (text_threads, image_threads)
    reference = torch_reference(encoder)
    if (folder / META_FILE).is_file():
        try:
            onnx, report = _verified(encoder, folder, reference, int8, threads)
            log.info(
                "ONNX encoder %s from cache %s, verified (%s) in %.1f s",
                spec.name,
                folder,
                _fmt(report),
                time.perf_counter() - started,
            )
            return onnx
        except ExportFailed as exc:
            log.warning("cached ONNX export %s failed verification, exporting again: %s", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        _remove_stale_work(Path(cache_dir), folder.name)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache_dir))
        work.chmod(0o755)  # mkdtemp makes it private; the cache is shared like the models
    except OSError as exc:
        raise ExportFailed(f"cannot write the ONNX cache {cache_dir}: {exc}") from None
    try:
        try:
            (exporter or export_towers)(encoder, work)
        except ExportFailed:
            raise
        except Exception as exc:  # noqa: BLE001 (the exporter raises many types)
            raise ExportFailed(f"export failed: {type(exc).__name__}: {exc}") from None
        # The served torch model must come out of the export as it went in
        # (a module left in training mode changes its BatchNorm statistics).
        after = torch_reference(encoder, texts=False)
        if encoder.model.training or _worst(after.image_one, reference.image_one) < 1 - 1e-6:
            raise ExportFailed("the export changed the torch model's outputs")
        onnx, report = _verified(encoder, work, reference, int8, threads)
        (work / META_FILE).write_text(
            json.dumps({**identity, "model_name": spec.name, "verified": report}, indent=1), encoding="utf-8"
        )
        try:
            os.rename(work, folder)
        except OSError:
            # Another process finished the same export first: its files are
            # equally verified by it; ours go (the open sessions keep theirs).
            log.info("ONNX export %s was cached meanwhile by another process", folder)
        onnx.text_model = folder / onnx.text_model.name
        onnx.image_model = folder / IMAGE_FILE
        log.info(
            "ONNX encoder %s exported to %s and verified (%s) in %.1f s",
            spec.name,
            folder,
            _fmt(report),
            time.perf_counter() - started,
        )
        return onnx
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_stale_work(cache_dir: Path, name: str, age_s: float = 3600.0) -> None:
    """Remove work folders of this export left by a killed process (an hour old: none runs that long)."""
    for stale in cache_dir.glob(f".{name}.*"):
        with contextlib.suppress(OSError):
            if stale.is_dir() and time.time() - stale.stat().st_mtime > age_s:
                shutil.rmtree(stale, ignore_errors=True)


def _fmt(report: dict) -> str:
    return ", ".join(f"{k} {v:.6f}" for k, v in report.items())
