"""Can the float32 text tower get cheaper on this CPU? Graph rewrites and less work, against the floor.

    python -m bench.bench_text_tower [--batches 1,8,32] [--threads 1,2] [--rounds 40]

Issue 11's two unmet targets (FLAT + the float32 text tower on 2 cores) are bounded by the text
encoder's CPU per query (`bench_capacity.py`). This bench exports the RN50 architecture's text
tower (random weights, seed 0: the model MODEL_NAME=RN50 MODEL_RANDOM_INIT=true serves) with
the service's own exporter (`onnx_export.export_text_tower`) twice and times, on the same
sentences and threads:

- **published**: cn_clip's `encode_text` as published, every position through every layer,
  run as the service runs a graph (ORT_ENABLE_ALL, no spinning): the baseline of each row;
- **published, ORT BERT fusions**: that graph through `onnxruntime.transformers.optimizer`
  (model_type "bert"): EmbedLayerNormalization, fused Attention, SkipLayerNormalization and
  BiasGelu, the rewrites ORT publishes for BERT inference on CPU;
- **last layer for [CLS] only**: the graph the service exports (operations.encoding.cls_text:
  the last layer's query, attention output and feed-forward pass for [CLS] alone, the only
  position `encode_text` reads);
- **[CLS] only, length groups (served)**: that graph run as the service runs a batch, in groups
  of texts whose token counts differ by at most 4, each trimmed to its own longest
  (`operations.encoding.base.encode_in_length_groups`).

Each rewritten graph's worst cosine to the published one on the service's probe texts is
printed (the service's bar is 0.9999). Queries are the sweep's sentences (9-33 characters), so
a batch is as wide as its longest query, as in the service. Per batch size and intra-op thread
count: the median wall time a query, its ratio to the published graph's, and for the graphs
that do all the work the arithmetic rate reached (GFLOP/s = 2 x the graph's MatMul
multiply-adds a token x tokens / time) against torch's float32 2048 x 2048 matrix product on
the same threads in the same run: a rate near that one means no graph rewrite can make the
tower much cheaper, only less arithmetic can.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import machine, median, other_load, table
from bench.bench_index import int_list
from operations.encoding.base import encode_in_length_groups, l2_normalise
from operations.encoding.onnx_encoder import open_session

# (label, graph, run in length groups): the published graph first, the baseline of each row.
VARIANTS = (
    ("published", "published", False),
    ("published, ORT BERT fusions", "fused", False),
    ("last layer for [CLS] only", "cls", False),
    ("[CLS] only, length groups (served)", "cls", True),
)


def matmul_macs_per_token(path: Path) -> float:
    """Multiply-adds per token of the projections and feed-forward layers (the graph's 2-D weights).

    Attention's own products (QK^T and its product with V) grow with the sequence and are small
    next to these at <= 52 tokens; they are left out, so the rate below is a lower bound.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {init.name: init for init in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        for name in node.input:
            if name in weights:
                shape = numpy_helper.to_array(weights[name]).shape
                if len(shape) == 2:
                    macs += shape[0] * shape[1]
    return float(macs)


def sgemm_gflops(threads: int, n: int = 2048, rounds: int = 10) -> float:
    """The machine's float32 matrix-product rate on `threads` threads: torch's n x n x n sgemm."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return 2 * n**3 / median(times) / 1e9
    finally:
        torch.set_num_threads(before)


def fuse(src: Path, dst: Path, heads: int, hidden: int) -> dict:
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(
        str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0, use_gpu=False
    )
    model.save_model_to_file(str(dst))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


class GroupedRun:
    """A session run as the service runs a batch: in length groups (base.LENGTH_SPREAD).

    `tokens_run` counts the tokens it multiplied, so the rate below is over the real work.
    """

    def __init__(self, sess) -> None:
        self.sess = sess
        self.tokens_run = 0

    def run(self, names, feeds):
        def one(part: np.ndarray) -> np.ndarray:
            self.tokens_run += part.size
            return self.sess.run(names, {"text": part})[0]

        tokens = feeds["text"]
        return [encode_in_length_groups(tokens, one, self.sess.get_outputs()[0].shape[1])]


def worst_cosine(a_sess, b_sess, batches: list[np.ndarray]) -> float:
    worst = 1.0
    for tokens in batches:
        a = a_sess.run(None, {"text": tokens})[0]
        b = b_sess.run(None, {"text": tokens})[0]
        cos = np.sum(l2_normalise(a) * l2_normalise(b), axis=1)
        worst = min(worst, float(cos.min()))
    return worst


def time_per_query(sess, token_batches: list[np.ndarray], rounds: int) -> tuple[float, float]:
    """(median ms per query, mean tokens per query incl. padding) over `rounds` batches."""
    for tokens in token_batches[:3]:
        sess.run(None, {"text": tokens})
    times, widths = [], []
    for i in range(rounds):
        tokens = token_batches[i % len(token_batches)]
        before = getattr(sess, "tokens_run", 0)
        t = time.perf_counter()
        sess.run(None, {"text": tokens})
        times.append((time.perf_counter() - t) * 1000 / len(tokens))
        run = getattr(sess, "tokens_run", before + tokens.size) - before
        widths.append(run / len(tokens))
    return median(times), float(np.mean(widths))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int_list, default=[1, 8, 32])
    ap.add_argument("--threads", type=int_list, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=40, help="timed batches per row")
    args = ap.parse_args(argv)

    from bench.bench_search import endless_queries
    from operations.encoding.clip_encoder import ClipEncoder
    from operations.encoding.model_files import ModelSpec
    from operations.encoding.onnx_export import PROBE_TEXT_BATCHES, export_text_tower

    print(f"machine: {machine()}; load average before start: {other_load():.2f}", flush=True)
    t_all = time.perf_counter()
    # The model the service builds for MODEL_NAME=RN50 MODEL_RANDOM_INIT=true (seed 0).
    enc = ClipEncoder.load(ModelSpec(name="RN50", random_init=True, seed=0, device="cpu"))
    bert = enc.model.bert.config
    heads, hidden = int(bert.num_attention_heads), int(bert.hidden_size)
    print(f"RN50 text tower: {bert.num_hidden_layers} layers, {heads} heads, hidden {hidden}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        published, cls_only, fused = (Path(tmp) / f for f in ("published.onnx", "cls.onnx", "fused.onnx"))
        export_text_tower(enc, published, cls_only=False)
        export_text_tower(enc, cls_only)  # what the service exports and serves
        stats = fuse(published, fused, heads, hidden)
        print(f"fused operators: {stats}", flush=True)
        macs = matmul_macs_per_token(published)
        print(f"MatMul multiply-adds per token (published graph): {macs / 1e6:.1f} M", flush=True)

        probe = [enc.tokenize(b).numpy() for b in PROBE_TEXT_BATCHES]
        queries = endless_queries()
        rows = []
        for threads in args.threads:
            sessions = {path: open_session(path, threads) for path in (published, fused, cls_only)}
            worst = {p.stem: worst_cosine(sessions[published], sessions[p], probe) for p in (fused, cls_only)}
            peak = sgemm_gflops(threads)
            print(
                f"threads {threads}: worst cosine to the published graph on the probe texts "
                + ", ".join(f"{k} {v:.7f}" for k, v in worst.items())
                + f"; sgemm 2048^3 {peak:.0f} GFLOP/s",
                flush=True,
            )
            for b in args.batches:
                texts = [[next(queries) for _ in range(b)] for _ in range(8)]
                token_batches = [enc.tokenize(batch).numpy() for batch in texts]
                first_ms = None
                for label, path, groups in VARIANTS:
                    sess = {"published": published, "fused": fused, "cls": cls_only}[path]
                    run = GroupedRun(sessions[sess]) if groups else sessions[sess]
                    ms, width = time_per_query(run, token_batches, args.rounds)
                    first_ms = first_ms or ms
                    if path == "cls":  # fewer multiply-adds than `macs` a token: no rate
                        rate = ("-", "-")
                    else:
                        gflops = 2 * macs * width / (ms / 1000) / 1e9
                        rate = (f"{gflops:.0f}", f"{gflops / peak:.2f}")
                    rows.append(
                        [label, threads, b, f"{width:.1f}", f"{ms:.2f}", f"{ms / first_ms:.2f}", *rate]
                    )
                    print(f"  {label} threads={threads} batch={b}: {ms:.2f} ms a query", flush=True)
    print()
    print(
        table(
            [
                "graph",
                "threads",
                "batch",
                "tokens a query (padded)",
                "ms a query",
                "vs published",
                "GFLOP/s (MatMuls)",
                "of sgemm's rate",
            ],
            rows,
        )
    )
    print(f"\n{time.perf_counter() - t_all:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
