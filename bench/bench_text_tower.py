"""Can the float32 text tower get cheaper on this CPU? ONNX Runtime's BERT fusions against the floor.

    python -m bench.bench_text_tower [--batches 1,8,32] [--threads 1,2] [--rounds 40]

Issue 11's two unmet targets (FLAT + the float32 text tower on 2 cores) are bounded by the text
encoder's CPU per query (`bench_capacity.py`). This bench tries the one graph-level lever the
service does not use yet and shows how far the tower is from the machine's arithmetic floor:

- **exported**: the service's own text tower (`ENCODER_BACKEND=auto`: the file `onnx_export`
  wrote and verified for the RN50 architecture with random weights), run as the service runs
  it (ORT_ENABLE_ALL, no spinning);
- **fused**: the same file through `onnxruntime.transformers.optimizer` (model_type "bert",
  12 heads, hidden 768): EmbedLayerNormalization, fused Attention, SkipLayerNormalization and
  BiasGelu, the rewrites ORT publishes for BERT inference on CPU. Checked against the exported
  tower on the service's probe texts (worst cosine printed; the service's bar is 0.9999);
- **exported, length groups**: the exported tower run as the service now runs a batch, in
  groups of texts whose token counts differ by at most 4, each group trimmed to its longest
  (`operations.encoding.base.encode_in_length_groups`): less padding multiplied.

Queries are the sweep's sentences (9-33 characters), tokenised by the service's tokenizer, so a
batch is as wide as its longest query, as in the service. For each batch size and intra-op
thread count it prints the median wall time per query and, from the graph's own MatMul shapes,
the multiply-adds per query and the arithmetic rate reached (GFLOP/s = 2 x MACs / time): a
rate near the core's peak means no graph rewrite can make the float32 tower much cheaper. The
peak is measured in the same run: torch's float32 2048 x 2048 matrix product on the same
thread counts (the rate a large, ideal sgemm reaches here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import machine, median, other_load, table
from bench.bench_index import int_list


def session(path: Path, threads: int):
    from operations.encoding.onnx_encoder import open_session

    return open_session(path, threads)


def matmul_macs_per_token(path: Path, hidden: int) -> float:
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
        from operations.encoding.base import encode_in_length_groups

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
        cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
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
    from config.settings import load_settings
    from operations.encoding.onnx_encoder import OnnxClipEncoder
    from operations.encoding.onnx_export import PROBE_TEXT_BATCHES
    from operations.factory import build_encoder

    print(f"machine: {machine()}; load average before start: {other_load():.2f}", flush=True)
    t_all = time.perf_counter()
    enc = build_encoder(load_settings(model_name="RN50", model_random_init=True, device="cpu"))
    if not isinstance(enc, OnnxClipEncoder):
        raise SystemExit(f"the ONNX towers did not verify here ({type(enc).__name__}): nothing to compare")
    exported = enc.text_model
    bert = enc.base.model.bert.config if enc.base.model is not None else None
    heads = int(getattr(bert, "num_attention_heads", 12))
    hidden = int(getattr(bert, "hidden_size", 768))
    print(f"text tower: {exported} (heads {heads}, hidden {hidden})", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        fused = Path(tmp) / "text.fused.onnx"
        stats = fuse(exported, fused, heads, hidden)
        print(f"fused operators: {stats}", flush=True)
        macs = matmul_macs_per_token(exported, hidden)
        print(f"MatMul multiply-adds per token: {macs / 1e6:.1f} M", flush=True)

        probe = [enc.base.tokenize(b).numpy() for b in PROBE_TEXT_BATCHES]
        queries = endless_queries()
        rows = []
        for threads in args.threads:
            base_s, fused_s = session(exported, threads), session(fused, threads)
            cos = worst_cosine(base_s, fused_s, probe)
            peak = sgemm_gflops(threads)
            print(
                f"threads {threads}: worst cosine fused vs exported on the probe texts {cos:.7f}; "
                f"sgemm 2048^3 {peak:.0f} GFLOP/s",
                flush=True,
            )
            for b in args.batches:
                texts = [[next(queries) for _ in range(b)] for _ in range(8)]
                token_batches = [enc.base.tokenize(batch).numpy() for batch in texts]
                for label, sess in (
                    ("exported", base_s),
                    ("fused", fused_s),
                    ("exported, length groups", base_s),
                ):
                    run = GroupedRun(sess) if label.endswith("groups") else sess
                    ms, width = time_per_query(run, token_batches, args.rounds)
                    gflops = 2 * macs * width / (ms / 1000) / 1e9
                    rate = f"{gflops:.0f}", f"{gflops / peak:.2f}"
                    rows.append([label, threads, b, f"{width:.1f}", f"{ms:.2f}", *rate])
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
                "GFLOP/s (MatMuls)",
                "of sgemm's rate",
            ],
            rows,
        )
    )
    print(f"\n{time.perf_counter() - t_all:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
