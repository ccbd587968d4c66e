"""Train the small demo Chinese-CLIP model from scratch on the demo dataset (CPU).

The model is ``cn_clip.clip.model.CLIP(**config)`` with the architecture in
``config/model_configs/demo-tiny.json``. Inputs go through exactly the
service's preprocessing: ``cn_clip.clip.image_transform(resolution)`` for
images (computed once up front; the optional shift augmentation acts on the
transformed tensors, training only) and ``cn_clip.clip.tokenize(text, 52)``
for text. The loss is CLIP's symmetric contrastive loss; a caption that fits
several images of a batch counts all of them as positives, so an exact
duplicate description is never pushed away as a negative.

Deterministic: fixed seeds, ``torch.use_deterministic_algorithms(True)``,
a fixed thread count, data order from a seeded numpy generator.

Usage: ``python scripts/train_demo_model.py [--data datasets/data/demo] [--out models/demo/demo-tiny.pt]``
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cn_clip.clip import image_transform, tokenize
from cn_clip.clip.model import CLIP
from PIL import Image

from datasets.demo_generator import COLOURS, SHAPES, read_families, read_images, read_scenes, read_texts

REPO_ROOT = Path(__file__).resolve().parent.parent

CONTEXT_LENGTH = 52


def load_split(data_dir: Path, split: str, resolution: int):
    """(image_ids, pixel tensor (N,3,R,R), texts) with the service's transform."""
    transform = image_transform(resolution)
    rows = read_images(data_dir, split)
    ids = [iid for iid, _ in rows]
    pixels = torch.stack([transform(Image.open(io.BytesIO(b))) for _, b in rows])
    return ids, pixels, read_texts(data_dir, split)


def tokens_for(texts: list[str]) -> torch.Tensor:
    return tokenize(texts, context_length=CONTEXT_LENGTH)


def trim(tokens: torch.Tensor) -> torch.Tensor:
    """Drop trailing all-padding columns: padded positions are masked out, so
    the [CLS] output is unchanged and the text tower runs on fewer tokens."""
    used = int((tokens != 0).sum(1).max())
    return tokens[:, :used]


@torch.no_grad()
def encode(model: CLIP, pixels: torch.Tensor, tokens: torch.Tensor, batch: int = 256):
    model.eval()
    img = torch.cat([model.encode_image(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])
    txt = torch.cat([model.encode_text(tokens[i : i + batch]) for i in range(0, len(tokens), batch)])
    return F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)


def recall(
    img_feats: torch.Tensor, txt_feats: torch.Tensor, image_ids: list[int], texts: list[dict], ks=(1, 5, 10)
) -> dict[str, float]:
    """Chinese-CLIP text-to-image recall: a hit if any ground-truth image is in the top k."""
    sims = txt_feats @ img_feats.t()
    top = sims.topk(max(ks), dim=1).indices.numpy()
    ids = np.asarray(image_ids)
    out = {}
    for k in ks:
        hits = [bool(set(ids[top[j, :k]]) & set(t["image_ids"])) for j, t in enumerate(texts)]
        out[f"t2i_R@{k}"] = float(np.mean(hits))
    out["t2i_mean"] = float(np.mean([out[f"t2i_R@{k}"] for k in ks]))
    return out


def object_probe(
    model: CLIP, img_feats: torch.Tensor, image_ids: list[int], scenes: dict, k: int = 5
) -> float:
    """Share of the top-k images of "一个<colour>的<shape>" that hold that object:
    low when the model only sees colours (recall alone can hide that)."""
    holders: dict[tuple[str, str], set[int]] = {}
    for idx, iid in enumerate(image_ids):
        for o in scenes[iid].objects:
            holders.setdefault((o.shape, o.colour), set()).add(idx)
    pairs = sorted(p for p, h in holders.items() if len(h) >= k)
    texts = [f"一个{COLOURS[c][0]}的{SHAPES[s][0]}" for s, c in pairs]
    with torch.no_grad():
        model.eval()
        feats = F.normalize(model.encode_text(tokens_for(texts)).float(), dim=-1)
    top = (feats @ img_feats.t()).topk(k, dim=1).indices.tolist()
    return float(np.mean([j in holders[p] for p, row in zip(pairs, top) for j in row]))


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float, scale_lr: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if name == "logit_scale":
            continue
        if p.ndim < 2 or "embeddings" in name or name.endswith("bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
        # A short run never moves CLIP's 1/0.07 far enough at the base lr, and a
        # low scale leaves look-alikes (same colours, other shapes) unseparated.
        {"params": [model.logit_scale], "weight_decay": 0.0, "lr": scale_lr},
    ]


def random_shift(pixels: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (edge padding)."""
    if max_shift <= 0:
        return pixels
    n, _, h, w = pixels.shape
    padded = F.pad(pixels, (max_shift,) * 4, mode="replicate")
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, oy : oy + h, ox : ox + w] for i, (oy, ox) in enumerate(offs.tolist())])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "datasets" / "data" / "demo")
    parser.add_argument(
        "--config", type=Path, default=REPO_ROOT / "config" / "model_configs" / "demo-tiny.json"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "demo" / "demo-tiny.pt")
    parser.add_argument("--epochs", type=int, default=36)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--init-scale", type=float, default=30.0, help="initial logit scale (CLIP: 1/0.07)")
    parser.add_argument("--scale-lr-mult", type=float, default=10.0, help="lr multiplier of the logit scale")
    parser.add_argument("--warmup", type=float, default=0.05, help="share of steps with linear warm-up")
    parser.add_argument(
        "--captions-per-image",
        type=int,
        default=1,
        help="captions of each image in a step (more text signal per image pass)",
    )
    parser.add_argument(
        "--families",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep look-alike families in one batch (hard negatives)",
    )
    parser.add_argument("--shift", type=int, default=0, help="max random translation in model pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--eval-every", type=int, default=0, help="epochs between valid evaluations (0: end only)"
    )
    parser.add_argument("--fp32", action="store_true", help="store float32 weights (default float16)")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    config = json.loads(args.config.read_text(encoding="utf-8"))
    resolution = int(config["image_resolution"])
    model = CLIP(**config).float()
    if isinstance(config["vision_layers"], list):
        # channels-last convolutions run ~1.3x faster on CPU; weights are the same.
        model.visual.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, resolution {resolution}", flush=True)

    train_ids, train_pixels, train_texts = load_split(args.data, "train", resolution)
    valid_ids, valid_pixels, valid_texts = load_split(args.data, "valid", resolution)
    train_tokens = tokens_for([t["text"] for t in train_texts])
    valid_tokens = tokens_for([t["text"] for t in valid_texts])
    valid_scenes = read_scenes(args.data, "valid")
    index_of = {iid: i for i, iid in enumerate(train_ids)}
    # every caption that fits an image, and every image a caption fits
    captions_of: list[list[int]] = [[] for _ in train_ids]
    gt_of: list[set[int]] = []
    for j, t in enumerate(train_texts):
        gt = {index_of[i] for i in t["image_ids"]}
        gt_of.append(gt)
        for i in gt:
            captions_of[i].append(j)
    assert all(captions_of), "every train image needs a caption"
    print(
        f"data: {len(train_ids)} train images, {len(train_texts)} captions; "
        f"{len(valid_ids)} valid images, {len(valid_texts)} captions "
        f"({time.perf_counter() - t_start:.1f}s)",
        flush=True,
    )

    # Look-alike families stay together in a batch: they are each other's hard negatives.
    family_of = read_families(args.data, "train") if args.families else {iid: iid for iid in train_ids}
    members: dict[int, list[int]] = {}
    for i, iid in enumerate(train_ids):
        members.setdefault(family_of[iid], []).append(i)
    families = [members[f] for f in sorted(members)]

    steps_per_epoch = math.ceil(len(train_ids) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup = max(1, int(total_steps * args.warmup))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(args.init_scale))
    opt = torch.optim.AdamW(
        param_groups(model, args.weight_decay, args.lr, args.lr * args.scale_lr_mult),
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup
        if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total_steps - warmup))),
    )

    step = 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        t_epoch = time.perf_counter()
        batches, current = [], []
        for f in rng.permutation(len(families)):
            current += families[f]
            if len(current) >= args.batch_size:
                batches.append(current)
                current = []
        if current:
            batches.append(current)
        losses = []
        for batch in batches:
            caps = []
            for i in batch:
                own = captions_of[i]
                k = min(args.captions_per_image, len(own))
                caps += [own[int(c)] for c in rng.choice(len(own), size=k, replace=False)]
            # targets[t, i]: caption t fits image i (its own image and any exact duplicate)
            targets = torch.tensor([[float(int(i) in gt_of[c]) for i in batch] for c in caps])
            pixels = random_shift(train_pixels[torch.as_tensor(batch)], args.shift, gen)
            pixels = pixels.contiguous(memory_format=torch.channels_last)
            tokens = trim(train_tokens[torch.as_tensor(caps)])
            img_f, txt_f, scale = model(pixels, tokens)
            logits = scale * txt_f @ img_f.t()
            loss_t2i = -(targets / targets.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
            loss_i2t = (
                -(targets.t() / targets.t().sum(1, keepdim=True) * F.log_softmax(logits.t(), 1)).sum(1).mean()
            )
            loss = (loss_t2i + loss_i2t) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
        msg = (
            f"epoch {epoch}/{args.epochs} loss {np.mean(losses):.4f} "
            f"scale {model.logit_scale.exp().item():.1f} lr {sched.get_last_lr()[0]:.2e} "
            f"{time.perf_counter() - t_epoch:.1f}s"
        )
        if args.eval_every and epoch % args.eval_every == 0 and epoch != args.epochs:
            img_f, txt_f = encode(model, valid_pixels, valid_tokens)
            metrics = recall(img_f, txt_f, valid_ids, valid_texts)
            metrics["object_probe"] = object_probe(model, img_f, valid_ids, valid_scenes)
            msg += " " + json.dumps({k: round(v, 4) for k, v in metrics.items()})
        print(msg, flush=True)

    img_f, txt_f = encode(model, valid_pixels, valid_tokens)
    metrics = recall(img_f, txt_f, valid_ids, valid_texts)
    metrics["object_probe"] = object_probe(model, img_f, valid_ids, valid_scenes)
    print(
        "valid (in-process, float32):", json.dumps({k: round(v, 4) for k, v in metrics.items()}), flush=True
    )

    state = {
        k: (v.half() if v.is_floating_point() and not args.fp32 else v).contiguous()
        for k, v in model.state_dict().items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    torch.save({"state_dict": state, "arch": "demo-tiny", "epoch": args.epochs, "seed": args.seed}, tmp)
    tmp.replace(args.out)
    print(
        f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) "
        f"total {time.perf_counter() - t_start:.0f}s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
