"""In-batch noise mixup (MERT, Yuan 2023 thesis section 5.1.4): add short excerpts of other clips of
the batch to a clip, so the model learns to follow the clip's own music through interference.

    mixed, n_mixed = inbatch_mixup(frames, lengths, rngs=[batch.rng(i, MIXUP) for i in rows], cfg=MixupConfig())

What the thesis fixes and what it leaves open:

* probability: "we determined a probability of 0.5 to be suitable" (section 5.6, thesis line 546;
  Table 5.4 also tries 0.25). Each clip is augmented with probability ``prob``.
* excerpts: "mixed with a certain ratio of shorter audio excerpts ... sampled from the same batch
  and added at random positions" (line 435), no numbers. The released MERT code
  (``yizhilll/MERT``, ``mert_fairseq/config/pretrain/MERT_RVQ-VAE_CQT_95M.yaml``) adds 1-3 excerpts
  of 12,000-24,000 samples at 24 kHz (0.5-1.0 s; here 22-43 frames at 43 frames/s) at volume 1.0.
* gain: the thesis gives none. MERT adds *waveforms*; here the mixing happens on the
  (CMVN-normalised) feature frames, where adding at gain 1 doubles each channel's variance, so
  the excerpt is added at a low gain drawn uniformly from ``gain`` (default 0.1-0.5, our choice):
  an approximation of mixing audio, not the same operation (log spectra do not add).

Targets stay the original clip's: the objective computes cluster ids and the CQT target from the
clean frames; only the encoder input is mixed. Every draw comes from the row's own generator
(a pure function of the sample's seed key), and the excerpts are copied from the *clean* batch, so
a row's mixture depends only on its key and the rows of its micro-batch: resume stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from m3bert.core.config import bounded
from m3bert.core.errors import ConfigError


@dataclass
class MixupConfig:
    """In-batch noise mixup on the encoder input (0 probability = off)."""

    prob: float = bounded(0.5, ge=0, le=1)  # chance a clip is augmented (thesis 5.6: 0.5)
    n_excerpts: list[int] = bounded(default_factory=lambda: [1, 3], ge=1, items=True)  # excerpts per augmented clip, inclusive range (MERT code: 1-3)
    excerpt_frames: list[int] = bounded(default_factory=lambda: [22, 43], ge=1, items=True)  # excerpt length range in frames (MERT code: 0.5-1.0 s)
    gain: list[float] = bounded(default_factory=lambda: [0.1, 0.5], ge=0, items=True)  # gain range on normalised features (not in the thesis; ours)

    def __post_init__(self) -> None:
        for name in ("n_excerpts", "excerpt_frames", "gain"):
            v = list(getattr(self, name))
            if len(v) != 2 or v[0] > v[1]:
                raise ConfigError(f"objective.mixup.{name}={v!r}; expected [low, high] with low <= high")


def inbatch_mixup(frames: torch.Tensor, lengths: torch.Tensor | Sequence[int], *, rngs: Sequence[np.random.Generator],
                  cfg: MixupConfig) -> tuple[torch.Tensor, int]:
    """``frames (B, T, C)`` -> ``(mixed copy (B, T, C), rows augmented)``; padding is never touched.

    Row ``i`` (drawn from ``rngs[i]``): with probability ``cfg.prob`` add ``n`` excerpts, each of
    ``L`` frames from a random position of another random row ``j != i``, times a gain ``g``, at
    a random position of row ``i``. A batch of one row is returned unchanged.
    """
    lens = [int(n) for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
    b = frames.shape[0]
    if len(rngs) != b or len(lens) != b:
        raise ConfigError(f"mixup: {len(rngs)} generators and {len(lens)} lengths for a batch of {b}")
    out = frames.clone()
    if b < 2 or cfg.prob <= 0:
        return out, 0
    n_mixed = 0
    for i, rng in enumerate(rngs):
        if rng.random() >= cfg.prob:
            continue
        n_mixed += 1
        for _ in range(int(rng.integers(cfg.n_excerpts[0], cfg.n_excerpts[1] + 1))):
            j = int(rng.integers(0, b - 1))
            j += j >= i
            want = int(rng.integers(cfg.excerpt_frames[0], cfg.excerpt_frames[1] + 1))
            size = max(1, min(want, lens[i], lens[j]))
            src = int(rng.integers(0, lens[j] - size + 1))
            dst = int(rng.integers(0, lens[i] - size + 1))
            gain = float(rng.uniform(cfg.gain[0], cfg.gain[1]))
            out[i, dst : dst + size] += gain * frames[j, src : src + size]
    return out, n_mixed
