"""The command line: calibrate a model, then search with the query language, cut and order."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import demo_generator as g
from scripts import cli

REPO = Path(__file__).resolve().parents[2]


def test_cli_calibrate_then_search_with_relevance(tmp_path, monkeypatch, capsys):
    data = tmp_path / "demo"
    g.write_split(g.generate_split("valid", 150, g.DEFAULT_SEED), data)
    env = {
        "MODEL_NAME": "demo-tiny",
        "MODEL_CHECKPOINT": str(REPO / "models" / "demo" / "demo-tiny.pt"),
        "MODEL_ARCH": str(REPO / "config" / "model_configs" / "demo-tiny.json"),
        "MILVUS_URI": str(tmp_path / "milvus.db"),
        "SQLITE_PATH": str(tmp_path / "images.sqlite3"),
        "CALIBRATION_DIR": str(tmp_path / "cal"),
        "DEVICE": "cpu",
        # Each command loads the model afresh; with the default (auto) each would verify the ONNX
        # export again. The backends are the subject of test_onnx_encoder.py, not of this test.
        "ENCODER_BACKEND": "torch",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # no .env of the repository is read

    assert cli.main(["search", "c", "红色"]) == 2  # no collection yet: a clear error
    assert cli.main(["load", "--dataset", str(data), "--split", "valid", "--collection", "c"]) == 0
    capsys.readouterr()
    assert cli.main(["search", "c", "红色", "--top-k", "5"]) == 0
    assert "relevance: none (model 'demo-tiny' is not calibrated" in capsys.readouterr().out

    assert cli.main(["calibrate", "--dataset", str(data), "--split", "valid", "--collection", "c"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["fitted_on"]["image_features_from"] == "collection" and fit["a"] > 0
    assert (tmp_path / "cal" / "demo-tiny.calibration.json").is_file()

    argv = ["search", "c", "圆形 -红色", "--top-k", "10", "--cut", "auto", "--order-by", "created_at"]
    assert cli.main(argv) == 0
    lines = [
        x for x in capsys.readouterr().out.splitlines() if x.strip().startswith(("1 ", "2 ")) or "id=" in x
    ]
    assert lines and all("relevance=0." in x or "relevance=1." in x for x in lines)
    assert cli.main(["search", "c", "红色:0"]) == 2  # malformed: the error, not a traceback
    assert "weight" in capsys.readouterr().err
