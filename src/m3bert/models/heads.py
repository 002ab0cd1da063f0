"""Output heads put on top of the encoder's hidden states.

``ReconstructionHead`` is M2BERT's pre-training head: "two feed-forward layers with GeLU
activation and layer-normalization" (Greer et al. 2023, after Mockingjay/MusiCoder):
``Linear(H, H) -> GeLU -> LayerNorm -> Linear(H, n_out)``. For Small that is
768*768 + 768 + 2*768 + 768*324 + 324 = 841,284 parameters; with the 28.6M encoder the total
is 29.4M, the paper's "29.3M".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from m3bert.core.errors import ConfigError


@dataclass
class ReconstructionHeadConfig:
    """The masked-reconstruction head."""

    hidden: int = 0  # width of the first layer; 0 = the encoder's hidden size
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon (BERT's)

    def __post_init__(self) -> None:
        if int(self.hidden) < 0:
            raise ConfigError(f"objective.head.hidden={self.hidden!r}; expected >= 0 (0 = encoder hidden size)")


class ReconstructionHead(nn.Module):
    """``(B, T, n_in) -> (B, T, n_out)``: dense + GeLU + LayerNorm, then a linear read-out."""

    def __init__(self, n_in: int, n_out: int, *, cfg: ReconstructionHeadConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ReconstructionHeadConfig()
        width = cfg.hidden or n_in
        self.dense = nn.Linear(n_in, width)
        self.norm = nn.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.out = nn.Linear(width, n_out)
        for layer in (self.dense, self.out):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(F.gelu(self.dense(hidden))))
