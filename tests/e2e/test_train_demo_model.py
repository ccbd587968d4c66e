"""The demo model's trainer is deterministic: the same data and arguments give
the same weights, so the committed checkpoint is reproducible by its script.
(The full 36-epoch run takes ~10.5 min on 2 idle cores and is not repeated
here; one epoch on a small generated split shows the property.)"""

from __future__ import annotations

import subprocess
import sys

import torch

from datasets import demo_generator as g
from tests.stack import REPO


def _train(data, out):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.train_demo_model",
            "--data",
            str(data),
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        cwd=REPO,
    )
    return torch.load(out, map_location="cpu", weights_only=True)


def test_training_twice_gives_identical_weights(tmp_path):
    g.ensure_demo_data(tmp_path, 0, {"train": 256, "valid": 64})
    first = _train(tmp_path, tmp_path / "a" / "demo-tiny.pt")
    second = _train(tmp_path, tmp_path / "b" / "demo-tiny.pt")
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][name]), name
    # Byte-identical too when written under the same file name.
    assert (tmp_path / "a" / "demo-tiny.pt").read_bytes() == (tmp_path / "b" / "demo-tiny.pt").read_bytes()
