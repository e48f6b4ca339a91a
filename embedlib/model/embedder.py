"""Embedder: loads a checkpoint once per process and turns batches of views into embeddings.

Used by the pipeline's write stage (Ray tasks and actors) and by the query CLI, so both embed identically.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from embedlib import views

from embedlib.model import checkpoint, exact

from embedlib.files import sources
from embedlib.config import InputConfig

log = logging.getLogger(__name__)


class Embedder:
    """A checkpoint's model in eval mode on one device, with the views settings and version it embeds with."""

    def __init__(self, model_uri: str, device: str | None = None, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        ckpt = checkpoint.load(model_uri, map_location=self.device)
        self.model = ckpt.model.to(self.device).eval()
        self.config = ckpt.config
        self.version = ckpt.version
        self.dim = ckpt.config.model.embedding_dim
        self.learned_dim = self.model.learned_dim
        self._word_weights = self.model.exact_word_weights()
        self.evidence_weights = self.model.evidence_weights()  # embedlib.views.evidence: what each item weighs

    def embed_views(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Batched views (views.stack) -> float32 [B, D] unit vectors."""
        n = len(next(iter(batch.values())))
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in batch.items()}
            return self.model.output(tensors).float().cpu().numpy()

    def words(self, batch: dict[str, np.ndarray], vectors: np.ndarray, top: int) -> list[exact.Words] | None:
        """The fixed part before its fold of each embedded row (embedlib.model.exact), its `top` heaviest ids; None
        when this model's fixed part is not a word-id fold (or top is 0)."""
        if self._word_weights is None or top < 1:
            return None
        view, weights = self._word_weights
        fixed_norms = np.linalg.norm(vectors[:, self.learned_dim:].astype(np.float64), axis=1)
        return exact.words_of(batch[view], weights, fixed_norms, top)

    def embed_bytes(self, data: bytes) -> np.ndarray:
        """One file's bounded bytes -> its embedding."""
        return self.embed_views(views.stack([views.compute_views(data, self.config)], self.config))[0]

    def embed_path(self, path: str, input_cfg: InputConfig | None = None) -> np.ndarray:
        """One file, read as an embedding run reads it (pass that run's input settings: its read bound decides
        truncation). Raises ValueError when the file cannot be embedded."""
        read = sources.read_path(path, input_cfg or self.config.input, hash_all=False)
        if not read.ok:
            raise ValueError(f"cannot embed {path}: {read.status} ({read.reason})")
        return self.embed_bytes(read.data)


@functools.lru_cache(maxsize=2)
def cached_embedder(model_uri: str, threads: int | None = None, device: str | None = None) -> Embedder:
    """One Embedder per model and process: Ray reuses worker processes, so tasks load a checkpoint once."""
    return Embedder(model_uri, device=device, threads=threads)
