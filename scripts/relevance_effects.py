"""Print the measured effects of the query language on a demo split (default: the test split).

    python -m scripts.relevance_effects [--dataset datasets/data/demo] [--split test]

Model and weights come from Settings (config/demo.env for the demo model: `set -a; .
config/demo.env`). What is measured: operations/relevance/effects.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from config.settings import REPO_ROOT, SettingsError, load_settings
from datasets import demo_generator as g
from operations.factory import build_encoder
from operations.relevance.compose import Weights
from operations.relevance.effects import measure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.relevance_effects", description=__doc__)
    p.add_argument("--dataset", type=Path, default=REPO_ROOT / "datasets" / "data" / "demo")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    try:
        s = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dataset.resolve() == g.DEFAULT_OUT.resolve():
        g.ensure_demo_data(args.dataset)  # the demo data is made, never stale
    weights = Weights(
        s.negative_term_weight,
        s.feedback_positive_weight,
        s.feedback_negative_weight,
        s.query_image_weight,
        s.negative_term_weight_no_text,
    )
    shapes = {k: v[0] for k, v in g.SHAPES.items()}
    colours = {k: v[0] for k, v in g.COLOURS.items()}
    result = measure(build_encoder(s), args.dataset, args.split, shapes, colours, weights)
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
