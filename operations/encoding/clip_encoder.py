"""Chinese-CLIP encoder: loading from local files only, batched inference.

Hub downloads are impossible on our machines, so a model is found either in a
download root (the file name cn_clip itself would download to) or as an
explicit checkpoint with an explicit architecture. Nothing here touches the
network.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from cn_clip.clip import _tokenizer, image_transform, tokenize
from cn_clip.clip.model import CLIP
from cn_clip.clip.utils import _MODEL_INFO, _MODELS

from operations.encoding.base import l2_normalise
from operations.errors import InvalidInput, ServiceError

log = logging.getLogger(__name__)

CN_CLIP_CONFIG_DIR = Path(__import__("cn_clip.clip", fromlist=["x"]).__file__).parent / "model_configs"
CONTEXT_LENGTH = 52


class ModelUnavailable(ServiceError):
    """The model's files are not where the settings say (a start-up error)."""

    code = "model_unavailable"


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


def resolve_architecture(arch: str) -> dict:
    """Return CLIP(**kwargs) for `arch`.

    `arch` is a JSON file holding the kwargs (our small demo model), or a cn_clip
    struct such as "RN50@RBT3-chinese", or a cn_clip model name ("RN50").
    """
    if arch in _MODEL_INFO:
        arch = _MODEL_INFO[arch]["struct"]
    path = Path(arch)
    if path.suffix == ".json":
        if not path.is_file():
            raise ModelUnavailable(f"architecture file not found: {path}")
        info = json.loads(path.read_text(encoding="utf-8"))
    elif "@" in arch:
        vision, text = arch.split("@", 1)
        info = {}
        for part in (vision, text):
            cfg = CN_CLIP_CONFIG_DIR / f"{part.replace('/', '-')}.json"
            if not cfg.is_file():
                raise ModelUnavailable(f"unknown cn_clip architecture part {part!r}")
            info.update(json.loads(cfg.read_text(encoding="utf-8")))
    else:
        raise ModelUnavailable(
            f"architecture {arch!r} is neither a .json file, a cn_clip model name "
            "nor a 'VISION@TEXT' struct"
        )
    if isinstance(info.get("vision_layers"), str):
        # cn_clip stores ResNet layer counts as a string like "[3,4,6,3]".
        info["vision_layers"] = json.loads(info["vision_layers"])
    return info


def _checkpoint_state_dict(path: Path) -> dict:
    # weights_only: a checkpoint is data, never code to run.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    if next(iter(state)).startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    # cn_clip's released checkpoints carry an unused BERT pooler.
    return {k: v for k, v in state.items() if "bert.pooler" not in k}


def normalise_text(text: str) -> str:
    """cn_clip's own text preparation (training and eval): lower-case, curly quotes to '"'.

    Without it a query with “引号” tokenises to [UNK] where the model learnt '"'.
    """
    return text.lower().replace("\u201c", '"').replace("\u201d", '"')


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def locate_model(spec: ModelSpec) -> tuple[Path | None, str, dict]:
    """(checkpoint or None for random weights, architecture, CLIP kwargs) of
    `spec`, or ModelUnavailable naming the missing file. Reads no weights."""
    checkpoint = spec.checkpoint
    if checkpoint is None and not spec.random_init:
        if spec.name not in _MODELS:
            raise ModelUnavailable(
                f"model {spec.name!r} is not a cn_clip model ({', '.join(_MODELS)}); "
                "set MODEL_CHECKPOINT and MODEL_ARCH for a custom model"
            )
        checkpoint = spec.download_root / _MODELS[spec.name][1]
        if not checkpoint.is_file():
            raise ModelUnavailable(
                f"checkpoint for {spec.name} not found at {checkpoint}; copy "
                f"{_MODELS[spec.name][1]} there (no download is attempted)"
            )
    arch = spec.arch or spec.name
    info = resolve_architecture(arch)
    if spec.random_init:
        return None, arch, info
    if not Path(checkpoint).is_file():
        raise ModelUnavailable(f"checkpoint not found: {checkpoint}")
    return Path(checkpoint), arch, info


class ClipEncoder:
    """Encoder over a cn_clip CLIP model, safe to call from many threads."""

    def __init__(self, model: CLIP, model_name: str, image_resolution: int,
                 device: torch.device, half: bool = False, text_int8: bool = False) -> None:
        self.model = model.eval()
        self.model_name = model_name
        self.device = device
        self.half = half and device.type == "cuda"
        self.model.to(device)
        if self.half:
            self.model.half()
        else:
            # cn_clip casts to fp16 when building; CPU inference needs float32.
            self.model.float()
        # Opt-in: the text tower's Linear layers as int8 (dynamic quantisation,
        # weights int8, activations quantised per call). On CPU a query's
        # encode is bound by those matrix products; int8 made it ~2.4x faster
        # (bench/README.md) at a small cost in fidelity, measured there too.
        # The image tower stays float32, so stored vectors never change.
        self.text_int8 = bool(text_int8) and device.type == "cpu"
        if self.text_int8:
            with warnings.catch_warnings():
                # torch 2.14 warns that torch.ao.quantization and its quantized
                # tensors will go in a future release; torch is pinned here and
                # the tests cover this path (moving to torchao is the way on).
                warnings.simplefilter("ignore", UserWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.ao.quantization.quantize_dynamic(self.model.bert, {torch.nn.Linear}, dtype=torch.qint8,
                                                       inplace=True)
        self.dim = int(model.text_projection.shape[1])
        self.context_length = CONTEXT_LENGTH
        self.image_resolution = image_resolution
        self.preprocess = image_transform(image_resolution)
        # A short query is a handful of small matrix products: one thread
        # answers it fastest and does not fight Milvus, SQL and other requests
        # for the cores (measured: 26 ms vs 420 ms with 2 threads on a busy
        # 2-core machine). Image batches still use every core.
        self.text_threads = 1
        self.image_threads = torch.get_num_threads()
        # One forward pass at a time: torch already spreads one pass over all
        # cores, and serialising keeps memory predictable under load.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, spec: ModelSpec) -> "ClipEncoder":
        """Build the encoder described by `spec` from local files only."""
        checkpoint, arch, info = locate_model(spec)
        if spec.random_init:
            torch.manual_seed(spec.seed)
        model = CLIP(**info)
        if checkpoint is not None:
            missing, unexpected = model.load_state_dict(
                _checkpoint_state_dict(checkpoint), strict=False
            )
            # cn_clip's text position_ids buffer may or may not be saved.
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise ModelUnavailable(
                    f"checkpoint {checkpoint} does not fit architecture {arch}: "
                    f"missing {missing[:3]}, unexpected {unexpected[:3]}"
                )
        log.info("loaded model %s (%s) dim=%d", spec.name, arch, info["embed_dim"])
        return cls(model, spec.name, int(info["image_resolution"]),
                   _pick_device(spec.device), spec.half, spec.text_int8)

    def check_text(self, text: str) -> None:
        if not text or not text.strip():
            raise InvalidInput("query text is empty")
        n_tokens = len(_tokenizer.tokenize(normalise_text(text))) + 2  # [CLS] and [SEP]
        if n_tokens > self.context_length:
            raise InvalidInput(
                f"query is {n_tokens} tokens; the model reads at most "
                f"{self.context_length} (about {self.context_length - 2} Chinese characters)",
                tokens=n_tokens, limit=self.context_length,
            )

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = [normalise_text(t) for t in texts[start:start + batch_size]]
            tokens = tokenize(batch, self.context_length)
            # Drop the all-padding tail: padding is masked out of attention and
            # positions are absolute, so the features are the same, and a short
            # query costs a quarter of the full 52-token pass.
            width = max(int(tokens.ne(0).sum(dim=1).max()), 1)
            tokens = tokens[:, :width]
            with self._lock:
                torch.set_num_threads(self.text_threads if len(batch) <= 8 else self.image_threads)
                feats = self.model.encode_text(tokens.to(self.device))
            out.append(feats.float().cpu().numpy())
        return l2_normalise(np.concatenate(out) if out else np.zeros((0, self.dim)))

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The published cn_clip transform, stacked: callers may run it in other threads."""
        return torch.stack([self.preprocess(im) for im in images])

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode an already preprocessed batch (N, 3, R, R)."""
        pixels = pixels.to(self.device)
        if self.half:
            pixels = pixels.half()
        with self._lock:
            torch.set_num_threads(self.image_threads)
            feats = self.model.encode_image(pixels)
        return l2_normalise(feats.float().cpu().numpy())

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        out = [
            self.encode_pixels(self.preprocess_images(images[start:start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class LazyClipEncoder:
    """A `ClipEncoder` whose weights are read on the first encode.

    Name and dim come from the architecture, and a missing checkpoint fails at
    once as with the eager encoder. For the command line: a load of
    precomputed features never encodes, so it never pays the model's memory
    (RN50: peak RSS 1.2 GB with the model vs 0.3 GB without).
    """

    def __init__(self, spec: ModelSpec) -> None:
        _, _, info = locate_model(spec)
        self.spec = spec
        self.model_name = spec.name
        self.dim = int(info["embed_dim"])
        self.context_length = CONTEXT_LENGTH
        self._encoder: ClipEncoder | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def _get(self) -> ClipEncoder:
        with self._lock:
            if self._encoder is None:
                self._encoder = ClipEncoder.load(self.spec)
            return self._encoder

    def check_text(self, text: str) -> None:
        self._get().check_text(text)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._get().encode_texts(texts)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self._get().encode_images(images)

    def __getattr__(self, name: str):
        # Everything else (preprocess, encode_pixels, ...) is the real encoder's.
        if name.startswith("_") or name == "spec":
            raise AttributeError(name)
        return getattr(self._get(), name)
