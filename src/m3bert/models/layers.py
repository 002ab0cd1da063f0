"""Layers shared by the architectures: the time mask and batch norm whose statistics skip padding.

A batch of encoder windows may hold windows shorter than the longest (``lengths``). The
architectures zero padded time steps after every block, so padding never reaches a valid output
through a convolution; batch norm is the one place it still could, through the batch statistics
of training mode. :class:`MaskedBatchNorm1d` / :class:`MaskedBatchNorm2d` compute those statistics
(and the running averages) over the valid time steps only, so a padded window trains exactly as
it would alone; in eval mode, or when nothing is padded, they are torch's batch norm.
``kim-cnn`` (``(B, C, T, F)`` maps) and ``pase`` / ``pase+`` (``(B, C, L)`` sequences) use them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def time_mask(lengths: torch.Tensor, n_steps: int) -> torch.Tensor:
    """``(B, n_steps)`` bool, True where the step is valid (index < ``lengths (B,)``)."""
    return torch.arange(n_steps, device=lengths.device)[None, :] < lengths[:, None]


def masked_batch_norm(bn: nn.BatchNorm1d | nn.BatchNorm2d, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Training-mode batch norm of ``x (B, C, T, ...)`` with statistics over ``valid (B, T)`` steps only.

    Updates ``bn``'s running mean and (unbiased) variance with its momentum, as torch does.
    """
    extra = x.dim() - 3  # trailing axes after time (frequency for 2-D maps), all counted
    m = valid.view(valid.shape[0], 1, valid.shape[1], *([1] * extra)).to(x.dtype)
    n = m.sum() * math.prod(x.shape[3:])
    dims = (0, *range(2, x.dim()))
    shape = (1, x.shape[1], *([1] * (x.dim() - 2)))
    mean = (x * m).sum(dims) / n
    var = ((x - mean.view(shape)).square() * m).sum(dims) / n
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            bn.running_mean.mul_(1 - bn.momentum).add_(bn.momentum * mean)
            bn.running_var.mul_(1 - bn.momentum).add_(bn.momentum * var * n / max(float(n) - 1, 1.0))
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` on ``(B, C, T)`` whose training statistics skip padded steps (``valid (B, T)``)."""

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if valid is None or not self.training or bool(valid.all()):
            return super().forward(x)
        return masked_batch_norm(self, x, valid)


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` on ``(B, C, T, F)`` whose training statistics skip padded time steps (``valid (B, T)``)."""

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if valid is None or not self.training or bool(valid.all()):
            return super().forward(x)
        return masked_batch_norm(self, x, valid)
