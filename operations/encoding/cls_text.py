"""cn_clip's `encode_text` with the last BERT layer computed for the [CLS] position only.

`CLIP.encode_text` runs every BERT layer over every token and then keeps position 0 of the
last layer's output. In that last layer the other positions' outputs are never read: they
need no query, no attention output projection and no feed-forward pass; only their keys and
values feed [CLS]'s attention. So the last layer here computes keys and values for every
token and the rest for [CLS] alone. The arithmetic for [CLS] is the same operations on the
same weights (layer norms, GELU, the pad-id mask and its -10000 bias, `text_projection`), so
the result equals `encode_text`'s up to float rounding; the exported text tower built on it
is verified against `encode_text` itself (onnx_export.verify) like any export.

Why: the float32 text tower already runs at the machine's matrix-product rate (bench/README.md,
"The float32 text tower against the machine's floor"), so the only way to make it cheaper is
less arithmetic. For the 3-layer RBT3 tower of RN50 the skipped part is about 28% of its
multiply-adds a token; for the 12- and 24-layer towers of the larger models 7% and 3%.
"""

from __future__ import annotations

import math

import torch
from cn_clip.clip.model import CLIP


def supports_cls_only(model: CLIP) -> bool:
    """True when the model's BERT is the plain layer stack this forward reproduces."""
    config = getattr(model.bert, "config", None)
    return config is not None and not getattr(config, "use_flash_attention", False)


def encode_text_cls_only(model: CLIP, text: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(text)`, with the last layer for [CLS] only (see the module docstring)."""
    bert = model.bert
    pad_index = model.tokenizer.vocab["[PAD]"]
    attn_mask = text.ne(pad_index).type(model.dtype)
    # BertModel.forward's extended mask: 0 where a token is attended, -10000 where it is padding.
    param_dtype = next(bert.parameters()).dtype
    bias = (1.0 - attn_mask[:, None, None, :].to(param_dtype)) * -10000.0
    hidden = bert.embeddings(text, token_type_ids=torch.zeros_like(text))
    layers = bert.encoder.layer
    for layer in layers[:-1]:
        out = layer(hidden, bias, None)
        hidden = out[0] if isinstance(out, tuple) else out
    cls = _last_layer_for_cls(layers[-1], hidden, bias)
    return cls.type(model.dtype) @ model.text_projection


def _last_layer_for_cls(layer, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """BertLayer.forward for position 0 only: (batch, hidden) from (batch, tokens, hidden)."""
    attention = layer.attention.self
    first = hidden[:, :1]
    query = attention.transpose_for_scores(attention.query(first))  # (batch, heads, 1, head size)
    key = attention.transpose_for_scores(attention.key(hidden))
    value = attention.transpose_for_scores(attention.value(hidden))
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(attention.attention_head_size)
    probs = torch.softmax(scores + bias, dim=-1)
    context = torch.matmul(probs, value).permute(0, 2, 1, 3)
    context = context.reshape(first.shape[0], 1, attention.all_head_size)
    attended = layer.attention.output(context, first)  # dense, dropout, LayerNorm(x + input)
    out = layer.output(layer.intermediate(attended), attended)
    return out[:, 0]
