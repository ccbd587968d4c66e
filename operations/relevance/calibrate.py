"""Fit and check a model's calibration on a labelled split in Chinese-CLIP's format.

A split is `${split}_texts.jsonl` (each caption with the ids of every image it matches) and
its images: `${split}_imgs.img_feat.jsonl` when present (features of this model), else the
vectors of a collection that holds the split, else `${split}_imgs.tsv` encoded here. Every
(caption, image) pair of the split is one labelled example: a match when the image is in the
caption's `image_ids`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.formats import BadRecord, SplitPaths, dataset_paths, iter_features, iter_image_tsv, iter_texts
from operations.context import Services
from operations.data_root import check_under, opened_under
from operations.encoding.base import Encoder
from operations.errors import InvalidInput, ServiceError
from operations.images import check_image
from operations.relevance.calibration import (
    Calibration,
    ReliabilityBin,
    fit_platt,
    pair_scores,
    reliability,
)

log = logging.getLogger(__name__)
_IMAGE_BATCH = 64
# Pairs above this many are sampled (all positives kept, negatives thinned with their weight
# restored), so a large split fits in bounded memory.
MAX_PAIRS = 20_000_000


@dataclass
class LabelledSplit:
    """A split's captions, their matching image ids and both sides' features."""

    name: str
    text_feats: np.ndarray
    positives: list[set[int]]
    image_ids: list[int]
    image_feats: np.ndarray
    image_source: str  # "features", "collection" or "images"

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Scores and labels of every (caption, image) pair."""
        return pair_scores(self.text_feats, self.positives, self.image_ids, self.image_feats)


# Callers without settings (evaluation scripts) get MAX_IMAGE_PIXELS' default.
DEFAULT_MAX_PIXELS = 40_000_000


def labelled_split_paths(dataset_dir: Path, split: str) -> SplitPaths:
    """The files of a labelled split (Chinese-CLIP layout); InvalidInput unless its texts file,
    the captions with their image_ids, is there."""
    try:
        paths = dataset_paths(dataset_dir, split)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if not paths.texts_jsonl.is_file():
        raise InvalidInput(f"{paths.texts_jsonl.name} not found in {dataset_dir}")
    return paths


def _encode_images(
    encoder: Encoder, tsv: Path, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[list[int], np.ndarray]:
    ids: list[int] = []
    chunks: list[np.ndarray] = []
    batch: list[Image.Image] = []
    for rec in iter_image_tsv(tsv):
        if isinstance(rec, BadRecord):
            log.warning("%s line %d skipped: %s", tsv.name, rec.line_no, rec.reason)
            continue
        try:  # the service's one decode: bombs and broken images are skipped, not a crash
            image = check_image(rec.data, len(rec.data) + 1, max_pixels).image
        except ServiceError as exc:
            log.warning("%s line %d skipped: %s", tsv.name, rec.line_no, exc.message)
            continue
        ids.append(rec.image_id)
        batch.append(image)
        if len(batch) == _IMAGE_BATCH:
            chunks.append(encoder.encode_images(batch))
            batch = []
    if batch:
        chunks.append(encoder.encode_images(batch))
    return ids, (np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32))


def read_labelled_split(
    encoder: Encoder,
    dataset_dir: Path,
    split: str,
    collection_vectors: Callable[[list[int]], dict[int, np.ndarray]] | None = None,
    *,
    data_root: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LabelledSplit:
    """The split's captions and images as features of `encoder`'s model (InvalidInput if unusable).

    With `data_root` (a calibration the server runs), each file is opened and
    checked to lie under it before it is read (operations.data_root).
    """
    with contextlib.ExitStack() as files:

        def readable(path: Path) -> Path:
            if data_root is None:
                return path
            return Path(files.enter_context(opened_under(data_root, path)))

        return _read_labelled_split(encoder, dataset_dir, split, collection_vectors, readable, max_pixels)


def _read_labelled_split(
    encoder: Encoder,
    dataset_dir: Path,
    split: str,
    collection_vectors: Callable[[list[int]], dict[int, np.ndarray]] | None,
    readable: Callable[[Path], Path],
    max_pixels: int,
) -> LabelledSplit:
    paths = labelled_split_paths(dataset_dir, split)
    texts_file = readable(paths.texts_jsonl)
    img_feat = readable(paths.img_feat) if paths.img_feat.is_file() else None
    imgs_tsv = readable(paths.imgs_tsv) if paths.imgs_tsv.is_file() else None
    texts = [t for t in iter_texts(texts_file) if not isinstance(t, BadRecord) and t.image_ids]
    if not texts:
        raise InvalidInput(f"{paths.texts_jsonl.name} holds no caption with image_ids")
    text_feats = encoder.encode_texts([t.text for t in texts])
    positives = [set(t.image_ids) for t in texts]

    source = "features"
    ids: list[int] = []
    feats = np.zeros((0, encoder.dim), np.float32)
    if img_feat is not None:
        recs = [r for r in iter_features(img_feat, "image_id", encoder.dim) if not isinstance(r, BadRecord)]
        ids = [r.id for r in recs]
        feats = np.stack([r.vector for r in recs]) if recs else feats
    if not ids and imgs_tsv is not None and collection_vectors is not None:
        wanted = [r.image_id for r in iter_image_tsv(imgs_tsv) if not isinstance(r, BadRecord)]
        found = collection_vectors(wanted)
        if wanted and len(found) == len(wanted):
            source, ids = "collection", wanted
            feats = np.stack([found[i] for i in wanted]).astype(np.float32)
    if not ids and imgs_tsv is not None:
        source = "images"
        ids, feats = _encode_images(encoder, imgs_tsv, max_pixels)
    if not ids:
        raise InvalidInput(f"split {split!r} has no images ({paths.imgs_tsv.name} or {paths.img_feat.name})")
    return LabelledSplit(split, text_feats, positives, ids, feats, source)


def _sample(scores: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if scores.size <= MAX_PAIRS:
        return scores, labels
    rng = np.random.default_rng(seed)
    keep = labels | (rng.random(scores.size) < (MAX_PAIRS / scores.size))
    return scores[keep], labels[keep]


def fit_calibration(
    data: LabelledSplit, model_name: str, checkpoint_sha256: str | None, dataset: str
) -> Calibration:
    """Platt parameters fitted on every labelled pair of `data` (InvalidInput if it cannot)."""
    scores, labels = _sample(*data.pairs())
    try:
        a, b = fit_platt(scores, labels)
    except ValueError as exc:
        raise InvalidInput(f"cannot calibrate on split {data.name!r}: {exc}") from None
    return Calibration(
        a=a,
        b=b,
        model_name=model_name,
        checkpoint_sha256=checkpoint_sha256,
        fitted_on={
            "dataset": dataset,
            "split": data.name,
            "captions": len(data.positives),
            "images": len(data.image_ids),
            "pairs": int(scores.size),
            "matching_pairs": int(labels.sum()),
            "image_features_from": data.image_source,
        },
    )


def check_calibration(data: LabelledSplit, calibration: Calibration) -> tuple[list[ReliabilityBin], float]:
    """Reliability diagram of `calibration` on a (held-out) labelled split."""
    scores, labels = data.pairs()
    return reliability(calibration.relevance(scores), labels)


def calibrate_model(
    svc: Services,
    dataset_dir: Path,
    split: str,
    collection: str | None = None,
    model: str | None = None,
    data_root: Path | None = None,
) -> tuple[Calibration, Path]:
    """Fit the calibration of a model (that of `collection`, else `model`, else the default) on
    a labelled split and store it with the model: every collection of the model then uses it."""
    if svc.calibrations is None:
        raise InvalidInput("this server has no calibration store")
    if collection is not None:
        encoder = svc.encoder_for(collection)

        def vectors(ids):
            return svc.vectors.get_vectors(collection, ids)
    else:
        encoder = svc.encoders.get(model) if model else svc.encoder
        vectors = None  # type: ignore[assignment]  # no stored vectors: features come from files
    if data_root is not None:
        dataset_dir = check_under(data_root, dataset_dir)
    data = read_labelled_split(
        encoder, dataset_dir, split, vectors, data_root=data_root, max_pixels=svc.settings.max_image_pixels
    )
    cal = fit_calibration(
        data, encoder.model_name, svc.calibrations.checkpoint_sha256(encoder.model_name), dataset_dir.name
    )
    path = svc.calibrations.save(cal)
    log.info(
        "calibrated %s on %s/%s: a=%.4f b=%.4f -> %s", cal.model_name, dataset_dir, split, cal.a, cal.b, path
    )
    return cal, path
