"""Choose the encoder backend (ENCODER_BACKEND): ONNX Runtime or torch.

- torch: the torch encoder (`ClipEncoder`), int8 text tower by torch when
  TEXT_INT8.
- onnx: the torch model is loaded, its towers exported to ONNX (once, cached)
  and verified against it on a probe set; the ONNX encoder serves, with an
  int8 ONNX text tower when TEXT_INT8. If no verified export can be had the
  start fails with one line naming the reason.
- auto (the default): as onnx on CPU, but a failure logs that one line and
  serves with torch instead. On a GPU device auto means torch (the
  onnxruntime package used here is CPU only).
"""

from __future__ import annotations

import logging
from pathlib import Path

from operations.encoding.clip_encoder import ClipEncoder, _pick_device
from operations.encoding.model_files import ModelSpec, ModelUnavailable

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / "models" / "onnx"


def load_encoder(spec: ModelSpec):
    """The encoder `spec` asks for: an `OnnxClipEncoder` or a `ClipEncoder`."""
    backend = spec.backend
    if backend not in BACKENDS:
        raise ModelUnavailable(f"ENCODER_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "auto" and _pick_device(spec.device).type != "cpu":
        backend = "torch"
    if backend == "torch":
        return ClipEncoder.load(spec)
    encoder = ClipEncoder.load(spec, text_int8=False)  # exported and verified as float32
    try:
        from operations.encoding.onnx_export import ExportFailed, onnx_encoder_for
    except ImportError as exc:  # onnxruntime missing
        return _fallback(backend, spec, encoder, f"onnxruntime is not importable: {exc}")
    try:
        onnx = onnx_encoder_for(
            encoder,
            spec,
            spec.onnx_cache_dir or DEFAULT_CACHE_DIR,
            int8=spec.text_int8,
            text_threads=spec.text_threads,
            image_threads=spec.image_threads,
        )
    except ExportFailed as exc:
        return _fallback(backend, spec, encoder, str(exc))
    # The ONNX towers hold their own copy of the weights; torch's are not
    # used again (tokeniser, transform and checks need no weights).
    onnx.release_torch()
    return onnx


def _fallback(backend: str, spec: ModelSpec, encoder: ClipEncoder, reason: str) -> ClipEncoder:
    if backend == "onnx":
        raise ModelUnavailable(f"ENCODER_BACKEND=onnx: no verified ONNX encoder for {spec.name}: {reason}")
    log.warning("ONNX encoder for %s not used, serving with torch: %s", spec.name, reason)
    if spec.text_int8:
        encoder.quantise_text_int8()
    return encoder
