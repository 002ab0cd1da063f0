"""The HEAR 2021 API (hear-eval-kit compatible): ``load_model``, ``get_scene_embeddings``,
``get_timestamp_embeddings``.

Usage, exactly as the HEAR harness calls a module::

    import m3bert.hear as hear
    model = hear.load_model("RUN_OR_MODEL_DIR")                 # or "random:m2bert-small"
    scene = hear.get_scene_embeddings(audio, model)             # (n_sounds, scene_embedding_size)
    emb, ts = hear.get_timestamp_embeddings(audio, model)       # (n, T, D), (n, T) in ms

``audio`` is a float32 tensor ``(n_sounds, n_samples)`` in [-1, 1] at ``model.sample_rate``
(44100 Hz for the M3BERT feature set). Each sound is embedded independently of the others in
the batch (its own CMVN statistics, its own encoder windows; the encoder batch is padded with a
key mask), so results never depend on batch composition. Timestamps are frame centres, starting
at 0 ms and evenly spaced by the feature hop (1024 / 44100 s = 23.2 ms, below HEAR's 50 ms limit).

Which hidden states: by default the last one (the M3BERT enrichment output for a multi-task
model, the last transformer layer otherwise), mean-pooled over time for scene embeddings (the
paper's choice). ``load_model(..., layers=[...], pool="meanstd")`` concatenates several layers
and/or adds the standard deviation; the embedding sizes follow.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from m3bert.core.errors import AudioError, ConfigError
from m3bert.embed import Embedder, parse_layers
from m3bert.embed import load_model as _load_embedder

__all__ = ["HearModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings", "DEFAULT_MODEL"]

DEFAULT_MODEL = "random:m2bert-small"  # what an empty model_file_path loads (the untrained baseline)


class HearModel(nn.Module):
    """An :class:`Embedder` with the HEAR attributes (``sample_rate``, ``scene_embedding_size``,
    ``timestamp_embedding_size``); a ``torch.nn.Module`` as the HEAR spec requires."""

    def __init__(self, embedder: Embedder, *, layers: int | str | Sequence[int] = -1, pool: str = "mean",
                 batch_size: int = 8) -> None:
        super().__init__()
        if pool not in ("mean", "meanstd"):
            raise ConfigError(f"pool={pool!r}; expected 'mean' or 'meanstd'")
        self.embedder = embedder
        self.encoder = embedder.encoder  # registered so .parameters()/.to() see the weights
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}; expected an integer >= 1 (encoder windows per forward pass)")
        self.layers = layers
        self.pool = pool
        self.batch_size = int(batch_size)
        idx, _ = parse_layers(layers, embedder.n_hidden_states)
        width = embedder.layer_dims[idx[0]] * len(idx)
        embedder.output_shape(layers=layers)  # refuses layers of different widths now
        self.sample_rate = embedder.sample_rate
        self.timestamp_embedding_size = width
        self.scene_embedding_size = width * (2 if pool == "meanstd" else 1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # pragma: no cover - convenience
        return get_scene_embeddings(audio, self)


def load_model(model_file_path: str = "", **kwargs: Any) -> HearModel:
    """HEAR entry point: a model directory, a run directory or ``random:CONFIG[:SEED]``.

    An empty path loads :data:`DEFAULT_MODEL` (the seeded, untrained baseline). Keyword
    arguments: ``layers``, ``pool``, ``batch_size`` (see :class:`HearModel`) and ``device``,
    ``dtype``, ``window_frames``, ``hop_frames`` (see :func:`m3bert.embed.load_model`).
    """
    hear_keys = {k: kwargs.pop(k) for k in ("layers", "pool", "batch_size") if k in kwargs}
    embedder = _load_embedder(model_file_path or DEFAULT_MODEL, **kwargs)
    return HearModel(embedder, **hear_keys)


def _as_hear(model: Any) -> HearModel:
    if isinstance(model, HearModel):
        return model
    if isinstance(model, Embedder):
        return HearModel(model)
    raise ConfigError(f"model must be what m3bert.hear.load_model returns, got {type(model).__name__}")


def _rows(audio: Any, model: HearModel) -> list[np.ndarray]:
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(audio)
    if not isinstance(audio, torch.Tensor):
        raise AudioError(f"audio must be a torch.Tensor (n_sounds, n_samples), got {type(audio).__name__}")
    if audio.dim() != 2:
        raise AudioError(f"audio must have shape (n_sounds, n_samples), got {tuple(audio.shape)}")
    if audio.shape[0] == 0:
        raise AudioError("audio batch is empty (n_sounds = 0)")
    x = audio.detach().to("cpu", torch.float32).numpy()
    return [x[i] for i in range(x.shape[0])]


def get_scene_embeddings(audio: torch.Tensor, model: Any) -> torch.Tensor:
    """``audio (n_sounds, n_samples)`` float32 at ``model.sample_rate`` -> ``(n_sounds, scene_embedding_size)``."""
    m = _as_hear(model)
    rows = _rows(audio, m)
    out = m.embedder.embed_many(rows, sample_rate=m.sample_rate, level="clip", layers=m.layers, pool=m.pool,
                                batch_size=m.batch_size, progress=False)
    emb = np.stack([o.reshape(-1) for o in out])  # several layers -> concatenated
    return torch.from_numpy(emb)


def get_timestamp_embeddings(audio: torch.Tensor, model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``audio (n_sounds, n_samples)`` -> ``(embeddings (n_sounds, T, D), timestamps_ms (n_sounds, T))``."""
    m = _as_hear(model)
    rows = _rows(audio, m)
    out = m.embedder.embed_many(rows, sample_rate=m.sample_rate, level="frame", layers=m.layers,
                                batch_size=m.batch_size, progress=False)
    embs, times = [], []
    for frames, t in out:
        if frames.ndim == 3:  # (n_layers, T, D) -> (T, n_layers * D)
            frames = np.transpose(frames, (1, 0, 2)).reshape(frames.shape[1], -1)
        embs.append(frames)
        times.append(t)
    emb = torch.from_numpy(np.stack(embs))
    ts = torch.from_numpy(np.stack(times).astype(np.float32))
    return emb, ts
