"""How many threads the encoders use.

Rule: the encoders get the cores this process may use (its CPU affinity, which
a container's cpuset also sets), unless ENCODER_THREADS says otherwise. One
forward pass runs at a time per model (batching makes each pass carry every
waiting query), so a pass may take every core; a short text batch (<= 8
queries) runs on one thread, because a few small matrix products gain nothing
from more and would only fight Milvus, SQL and HTTP for the cores. The HTTP
side needs no core of its own: requests that wait for a batch hold no thread.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def encoder_threads(configured: int) -> int:
    """ENCODER_THREADS; when 0, OMP_NUM_THREADS if set (an operator's cap), else the available cores."""
    if configured > 0:
        return configured
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return min(int(omp), available_cores())
    return available_cores()


def apply_encoder_threads(encoder: object, threads: int) -> None:
    """Give a torch-backed encoder `threads` intra-op threads for its large batches.

    Encoders that manage their own threads (e.g. ONNX Runtime sessions built
    with a thread count) are left alone.
    """
    if hasattr(encoder, "image_threads"):
        encoder.image_threads = threads
        if "torch" in __import__("sys").modules:
            import torch

            torch.set_num_threads(threads)
