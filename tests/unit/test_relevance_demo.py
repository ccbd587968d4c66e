"""The demo model's shipped calibration and the query language's effects on the demo test split.

The test split is regenerated into a temporary directory (deterministic, seconds), as
test_demo_model.py does, so the figures never depend on a stale local copy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets import demo_generator as g
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.model_files import ModelSpec
from operations.relevance.calibrate import check_calibration, read_labelled_split
from operations.relevance.calibration_store import CalibrationBook
from operations.relevance.compose import Weights
from operations.relevance.effects import (
    demo_queries,
    feedback_effect,
    image_negation_effect,
    load_split_index,
    negation_effect,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO_ROOT / "models" / "demo" / "demo-tiny.pt"
ARCH = REPO_ROOT / "config" / "model_configs" / "demo-tiny.json"
SHAPES = {k: v[0] for k, v in g.SHAPES.items()}
COLOURS = {k: v[0] for k, v in g.COLOURS.items()}
# The service's defaults (config/settings.py).
WEIGHTS = Weights(
    negative_term=0.0, feedback_positive=3.0, feedback_negative=0.25, image=1.0, negative_term_no_text=2.0
)


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return ClipEncoder.load(ModelSpec(name="demo-tiny", checkpoint=CHECKPOINT, arch=str(ARCH), device="cpu"))


@pytest.fixture(scope="module")
def test_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    g.write_split(g.generate_split("test", g.DEFAULT_SIZES["test"], g.DEFAULT_SEED), out)
    return out


@pytest.fixture(scope="module")
def index(encoder, test_dir):
    return load_split_index(encoder, test_dir, "test")


def test_demo_model_ships_calibrated_for_its_checkpoint():
    state = CalibrationBook({"demo-tiny": CHECKPOINT}).get("demo-tiny")
    assert state.calibration is not None, state.reason
    assert state.calibration.fitted_on["split"] == "valid"


def test_calibration_is_reliable_on_the_held_out_test_split(encoder, test_dir):
    cal = CalibrationBook({"demo-tiny": CHECKPOINT}).get("demo-tiny").calibration
    bins, ece = check_calibration(read_labelled_split(encoder, test_dir, "test"), cal)
    assert ece < 0.005
    # Every well-filled bin: observed precision within 0.1 of the predicted one; and the
    # observed precision rises from the lowest to the highest filled bin.
    filled = [b for b in bins if b.pairs >= 1000]
    assert len(filled) >= 4
    for b in filled:
        assert abs(b.predicted - b.observed) < 0.1, b
    assert filled[-1].observed > 10 * filled[0].observed


def test_an_unwanted_colour_nearly_vanishes_and_the_shape_share_holds(encoder, index):
    shape_neg, _, _ = demo_queries(SHAPES, COLOURS)
    e = negation_effect(index, encoder.encode_texts, shape_neg, weights=WEIGHTS)
    assert e.plain_unwanted_share > 0.08  # the plain query does show the colour
    assert e.negated_unwanted_share < 0.04 and e.negated_unwanted_share < e.plain_unwanted_share / 3
    assert e.negated_wanted_share > e.plain_wanted_share - 0.05  # stated margin: 5 points


def test_an_unwanted_colour_leaves_an_image_query(encoder, index):
    e = image_negation_effect(index, encoder.encode_texts, COLOURS, weights=WEIGHTS)
    assert e.plain_unwanted_share > 0.5  # similar images mostly share the colour
    assert e.negated_unwanted_share < 0.05
    assert e.negated_shared_share > e.plain_shared_share - 0.04  # stated margin: 4 points


def test_three_positive_examples_raise_precision_at_10(encoder, index):
    _, _, objs = demo_queries(SHAPES, COLOURS)
    e = feedback_effect(index, encoder.encode_texts, objs, weights=WEIGHTS)
    assert e.queries >= 40
    assert e.feedback_precision >= e.plain_precision + 0.02
