"""Chinese-CLIP encoder: loading from local files only, batched inference.

Hub downloads are impossible on our machines, so a model is found either in a
download root (the file name cn_clip itself would download to) or as an
explicit checkpoint with an explicit architecture. Nothing here touches the
network.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from cn_clip.clip import _tokenizer, tokenize
from cn_clip.clip.model import CLIP
from PIL import Image

from operations.encoding.base import FairLock, encode_in_length_groups, l2_normalise
from operations.encoding.model_files import (
    CONTEXT_LENGTH,
    ModelSpec,
    ModelUnavailable,
    locate_model,
    resolve_threads,
)
from operations.encoding.preprocess import FastImageTransform
from operations.errors import InvalidInput

log = logging.getLogger(__name__)


def _checkpoint_state_dict(path: Path) -> dict:
    # weights_only: a checkpoint is data, never code to run.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    if next(iter(state)).startswith("module."):
        state = {k[len("module.") :]: v for k, v in state.items()}
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


class ClipEncoder:
    """Encoder over a cn_clip CLIP model, safe to call from many threads."""

    def __init__(
        self,
        model: CLIP,
        model_name: str,
        image_resolution: int,
        device: torch.device,
        half: bool = False,
        text_int8: bool = False,
        text_threads: int = 1,
        image_threads: int = 0,
    ) -> None:
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
        # encode is bound by those matrix products, which int8 makes faster at a
        # small cost in fidelity (both measured: bench/README.md, "Search").
        # The image tower stays float32, so stored vectors never change.
        self.text_int8 = False
        if text_int8:
            self.quantise_text_int8()
        self.dim = int(model.text_projection.shape[1])
        self.context_length = CONTEXT_LENGTH
        self.image_resolution = image_resolution
        # cn_clip's image_transform, bit for bit, in one numpy pass (preprocess.py).
        self.preprocess = FastImageTransform(image_resolution)
        # A short query is a handful of small matrix products: one thread
        # answers it fastest and does not fight Milvus, SQL and other requests
        # for the cores (bench/README.md, "Findings and suggested changes"). Image batches use every core
        # (0: resolve_threads, which keeps an operator's OMP_NUM_THREADS cap).
        self.text_threads = resolve_threads(text_threads)
        self.image_threads = resolve_threads(image_threads)
        # One forward pass at a time: torch already spreads one pass over all
        # cores, and serialising keeps memory predictable under load. Granted
        # in request order, so a query batch waits for at most the pass in
        # progress, never for a whole bulk add.
        self._lock = FairLock()

    backend = "torch"

    def quantise_text_int8(self) -> None:
        """Turn the text tower's Linear layers int8 (CPU only; a no-op elsewhere or when done)."""
        if self.text_int8 or self.device.type != "cpu":
            return
        with warnings.catch_warnings():
            # torch 2.14 warns that torch.ao.quantization and its quantized
            # tensors will go in a future release; torch is pinned here and
            # the tests cover this path (moving to torchao is the way on).
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.ao.quantization.quantize_dynamic(
                self.model.bert, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
            )
        self.text_int8 = True

    @classmethod
    def load(cls, spec: ModelSpec, text_int8: bool | None = None) -> ClipEncoder:
        """Build the torch encoder described by `spec` from local files only.

        `text_int8` overrides the spec's (the ONNX backend exports a float32 tower).
        """
        checkpoint, arch, info = locate_model(spec)
        if spec.random_init:
            torch.manual_seed(spec.seed)
        model = CLIP(**info)
        if checkpoint is not None:
            missing, unexpected = model.load_state_dict(_checkpoint_state_dict(checkpoint), strict=False)
            # cn_clip's text position_ids buffer may or may not be saved.
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise ModelUnavailable(
                    f"checkpoint {checkpoint} does not fit architecture {arch}: "
                    f"missing {missing[:3]}, unexpected {unexpected[:3]}"
                )
        log.info("loaded model %s (%s) dim=%d", spec.name, arch, info["embed_dim"])
        return cls(
            model,
            spec.name,
            int(info["image_resolution"]),
            _pick_device(spec.device),
            spec.half,
            spec.text_int8 if text_int8 is None else text_int8,
            spec.text_threads,
            spec.image_threads,
        )

    def check_text(self, text: str) -> None:
        if not text or not text.strip():
            raise InvalidInput("query text is empty")
        n_tokens = len(_tokenizer.tokenize(normalise_text(text))) + 2  # [CLS] and [SEP]
        if n_tokens > self.context_length:
            raise InvalidInput(
                f"query is {n_tokens} tokens; the model reads at most "
                f"{self.context_length} (about {self.context_length - 2} Chinese characters)",
                tokens=n_tokens,
                limit=self.context_length,
            )

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids (n, width) of `texts`, as wide as the longest of them, never padded to 52.

        Padding is masked out of attention and positions are absolute, so the
        features equal the full 52-token pass, and a short query costs a
        quarter of it. Texts longer than the context are cut (callers check
        queries with `check_text` first).
        """
        tokens = tokenize([normalise_text(t) for t in texts], self.context_length)
        width = max(int(tokens.ne(0).sum(dim=1).max()), 1)
        return tokens[:, :width]

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            tokens = self.tokenize(batch).numpy()
            with self._lock:
                torch.set_num_threads(self.text_threads if len(batch) <= 8 else self.image_threads)
                out.append(encode_in_length_groups(tokens, self._encode_tokens, self.dim))
        return l2_normalise(np.concatenate(out) if out else np.zeros((0, self.dim)))

    @torch.no_grad()
    def _encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        feats = self.model.encode_text(torch.from_numpy(tokens).to(self.device))
        return feats.float().cpu().numpy()

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The published cn_clip transform, stacked: callers may run it in other threads."""
        return torch.from_numpy(self.preprocess.batch(images))

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
            self.encode_pixels(self.preprocess_images(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
