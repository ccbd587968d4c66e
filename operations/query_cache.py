"""An LRU of query-text embeddings, keyed by (model identity, normalised text).

The model identity makes it impossible to serve one model's vector for
another: it names the model, its backend and precision where the encoder says
them (ONNX int8 and float32 give different vectors), and a token unique to the
encoder object, so two encoders never share an entry even when their names
and settings agree (e.g. a collection's model reloaded with other weights).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict

import numpy as np

from operations import metrics

_tokens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_next_token = itertools.count(1)
_tokens_lock = threading.Lock()


def encoder_identity(encoder: object) -> tuple:
    """What a cached vector depends on: model name, dim, backend, precision, this object."""
    with _tokens_lock:
        try:
            token = _tokens.get(encoder)
            if token is None:
                token = _tokens[encoder] = next(_next_token)
        except TypeError:  # not weak-referenceable: fall back to the object's id
            token = f"id{id(encoder)}"
    return (
        getattr(encoder, "model_name", "?"),
        getattr(encoder, "dim", 0),
        str(getattr(encoder, "backend", "")),
        str(getattr(encoder, "identity", "")),
        bool(getattr(encoder, "text_int8", False)),
        token,
    )


def normalise_query(text: str) -> str:
    """The text as the encoder reads it: cn_clip lower-cases and maps curly quotes,
    and its tokenizer splits on any run of whitespace, so runs and the ends collapse."""
    text = text.lower().replace("\u201c", '"').replace("\u201d", '"')
    return " ".join(text.split())


class QueryCache:
    """Thread-safe LRU of read-only float32 vectors; `capacity` 0 = off."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._hit = metrics.QUERY_CACHE.labels("hit")
        self._miss = metrics.QUERY_CACHE.labels("miss")

    def key(self, encoder: object, text: str) -> tuple:
        return (encoder_identity(encoder), normalise_query(text))

    def get(self, key: tuple) -> np.ndarray | None:
        if self.capacity == 0:
            return None
        with self._lock:
            vector = self._items.get(key)
            if vector is None:
                self.misses += 1
                self._miss.inc()
                return None
            self._items.move_to_end(key)
            self.hits += 1
            self._hit.inc()
            return vector

    def put(self, key: tuple, vector: np.ndarray) -> None:
        if self.capacity == 0:
            return
        vector = np.array(vector, dtype=np.float32, copy=True)
        vector.setflags(write=False)  # shared between requests: nobody may change it
        with self._lock:
            self._items[key] = vector
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def stats(self) -> dict:
        with self._lock:
            total = self.hits + self.misses
            return {
                "capacity": self.capacity,
                "entries": len(self._items),
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": round(self.hits / total, 4) if total else 0.0,
            }
