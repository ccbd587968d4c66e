"""Where a model's calibration lives: a JSON file beside its checkpoint.

`<checkpoint without suffix>.calibration.json` (or `<CALIBRATION_DIR>/<model>.calibration.json`
when that setting is set, e.g. for a read-only model folder). The file names the model and the
sha256 of the checkpoint it was fitted on; a fit for other weights is ignored (uncalibrated,
with the reason), never applied. Every collection of the model reads the same file, so a
calibration follows the model, and the demo model ships with its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from operations.relevance.calibration import Calibration


@dataclass(frozen=True)
class CalibrationState:
    """A model's calibration, or None and why not (said to the caller instead of a number)."""

    calibration: Calibration | None
    reason: str = ""


def _file_key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_mtime_ns, st.st_size)


class CalibrationBook:
    """Calibrations of the models a server runs, read from their files and cached by mtime."""

    def __init__(self, checkpoints: dict[str, Path | None], directory: Path | None = None) -> None:
        # model name -> its checkpoint (None: random weights, never calibrated)
        self._checkpoints = dict(checkpoints)
        self._directory = directory
        self._lock = threading.Lock()
        self._sha: dict[tuple, str] = {}
        self._read: dict[str, tuple[tuple | None, CalibrationState]] = {}

    def path_for(self, model_name: str) -> Path | None:
        """The calibration file of `model_name` (None when the model has no checkpoint)."""
        checkpoint = self._checkpoints.get(model_name)
        if self._directory is not None:
            return self._directory / f"{model_name}.calibration.json"
        if checkpoint is None:
            return None
        return checkpoint.with_name(checkpoint.stem + ".calibration.json")

    def checkpoint_sha256(self, model_name: str) -> str | None:
        """sha256 of the model's checkpoint file, computed once per file version."""
        checkpoint = self._checkpoints.get(model_name)
        key = _file_key(checkpoint) if checkpoint is not None else None
        if key is None:
            return None
        with self._lock:
            if key not in self._sha:
                digest = hashlib.sha256()
                with open(checkpoint, "rb") as f:  # type: ignore[arg-type]  # key is None without it
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
                self._sha[key] = digest.hexdigest()
            return self._sha[key]

    def get(self, model_name: str) -> CalibrationState:
        """The model's calibration if a file fitted on its current checkpoint exists."""
        if model_name not in self._checkpoints:
            return CalibrationState(None, f"model {model_name!r} is not configured on this server")
        path = self.path_for(model_name)
        if path is None:
            return CalibrationState(None, f"model {model_name!r} has no checkpoint (random weights)")
        key = _file_key(path)
        with self._lock:
            cached = self._read.get(model_name)
            if cached is not None and cached[0] == key:
                return cached[1]
        state = self._load(model_name, path, key)
        with self._lock:
            self._read[model_name] = (key, state)
        return state

    def _load(self, model_name: str, path: Path, key: tuple | None) -> CalibrationState:
        if key is None:
            return CalibrationState(
                None, f"model {model_name!r} is not calibrated (run `imgsearch calibrate`)"
            )
        try:
            cal = Calibration.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return CalibrationState(None, f"calibration file {path.name} is unreadable: {exc}")
        if cal.model_name != model_name:
            return CalibrationState(None, f"calibration file {path.name} is for model {cal.model_name!r}")
        if cal.checkpoint_sha256 != self.checkpoint_sha256(model_name):
            return CalibrationState(
                None, f"calibration of {model_name!r} was fitted on other weights; calibrate again"
            )
        return CalibrationState(cal)

    def save(self, calibration: Calibration) -> Path:
        """Write the calibration file of its model atomically (a reader sees old or new)."""
        path = self.path_for(calibration.model_name)
        if path is None:
            raise ValueError(f"model {calibration.model_name!r} has no checkpoint to calibrate")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(
            json.dumps(calibration.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        os.replace(tmp, path)
        with self._lock:
            self._read.pop(calibration.model_name, None)
        return path
