"""M2BERT: a BERT-style bidirectional transformer over feature frames.

``Encoder`` maps frames ``(batch, frames, n_input)`` plus their valid ``lengths`` to the
list of hidden states of every layer: index 0 is the input embedding (projection +
positions), 1..L the transformer layers, and, for an M3BERT model, one more entry: the
output of the multi-task enrichment layer (time-distributed dense), the M3BERT
representation. Padded frames never influence real frames (key padding mask).

A model directory (``save_pretrained`` / ``from_pretrained``, shared by every architecture in
:mod:`m3bert.models.base`) is ``config.json`` + ``model.safetensors``; loading never unpickles
anything. This is the ``m2bert`` architecture, the default of a folder that names none.

Inference speed (issue 18; measured in ``perf/results/embed.md``): Q, K and V are one fused
``nn.Linear`` (``qkv``, as stored in every model folder), attention is PyTorch's SDPA (its flash
kernel on CPU, fed contiguous heads; attention-probability dropout only in training mode), and bf16 autocast keeps
LayerNorm and residuals in fp32. :func:`quantize_int8` makes the opt-in int8 copy of any model
(``m3bert embed --dtype int8``): dynamic per-tensor quantisation of every ``nn.Linear``; attention
scores and everything else stay fp32. Its clip-level cosine to fp32 is tested (>= 0.999).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from m3bert.core.config import bounded, from_dict
from m3bert.core.errors import ConfigError
from m3bert.models.base import (  # noqa: F401  (re-exported: the names callers import from here)
    MODEL_CONFIGS,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    ModelBase,
    available_models,
    check_same,
    create_model,
    get_model_config,
    load_state_checked,
    register_architecture,
    register_model_config,
)


@dataclass
class EnrichmentConfig:
    """The M3BERT multi-task enrichment layer: time-distributed dense layers on the encoder."""

    n_layers: int = bounded(1, ge=1)  # number of dense layers (>= 1)
    dim: int = bounded(0, ge=0)  # width of each layer; 0 = the encoder's hidden size
    dropout: float = bounded(0.1, ge=0, lt=1)  # dropout after each layer (training only)


@dataclass
class EncoderConfig:
    """Architecture of an M2BERT encoder (and optional M3BERT enrichment)."""

    n_input: int = bounded(324, ge=1)  # channels per input frame (the feature set's n_channels)
    hidden: int = bounded(768, ge=1)  # hidden size H
    n_layers: int = bounded(4, ge=1)  # transformer layers L
    n_heads: int = bounded(12, ge=1)  # attention heads A
    ffn: int = bounded(3072, ge=1)  # feed-forward inner size
    dropout: float = bounded(0.1, ge=0, lt=1)  # residual/FFN dropout
    attention_dropout: float = bounded(0.0, ge=0, lt=1)  # dropout on attention probabilities; 0 by default: >0 makes CPU SDPA fall back to a path ~2x slower
    max_frames: int = bounded(1294, ge=1)  # longest sequence (30 s at 44.1 kHz / hop 1024)
    norm: str = "post"  # "post" (BERT) or "pre" (Pre-LN, more stable when scaling)
    activation: str = "gelu"  # FFN activation
    layer_norm_eps: float = bounded(1e-12, gt=0)  # BERT's LayerNorm epsilon
    positional: str = "sinusoidal"  # "sinusoidal" (fixed) or "learned"
    enrichment: EnrichmentConfig | None = None  # set for an M3BERT model

    def __post_init__(self) -> None:
        if isinstance(self.enrichment, dict):
            self.enrichment = from_dict(EnrichmentConfig, self.enrichment, where="model.enrichment")
        if self.hidden % self.n_heads:
            raise ConfigError(f"model.hidden={self.hidden} must be divisible by model.n_heads={self.n_heads}")
        if self.norm not in ("post", "pre"):
            raise ConfigError(f"model.norm={self.norm!r}; expected 'post' or 'pre'")
        if self.positional not in ("sinusoidal", "learned"):
            raise ConfigError(f"model.positional={self.positional!r}; expected 'sinusoidal' or 'learned'")
        if self.activation not in ("gelu", "relu"):
            raise ConfigError(f"model.activation={self.activation!r}; expected 'gelu' or 'relu'")
        for name in ("n_input", "hidden", "n_layers", "n_heads", "ffn", "max_frames"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"model.{name}={getattr(self, name)!r}; expected a positive integer")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderConfig":
        return from_dict(cls, data, where="model")


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def sinusoidal_positions(n_frames: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal position table ``(n_frames, dim)`` (Vaswani et al.)."""
    pos = torch.arange(n_frames, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_frames, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return table


def quantize_int8(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` (CPU) whose ``nn.Linear`` layers compute in int8.

    Dynamic quantisation (``torch.ao.quantization.quantize_dynamic``): weights quantised once,
    per tensor, activations per batch at run time. ``model`` itself is not changed. Works for any
    architecture built of ``nn.Linear`` layers; raises ``ConfigError`` where torch lacks it.
    """
    quantize = getattr(getattr(torch, "ao", None), "quantization", None)
    if quantize is None or not hasattr(quantize, "quantize_dynamic"):
        raise ConfigError(f"dtype='int8' needs torch.ao.quantization.quantize_dynamic, which torch "
                          f"{torch.__version__} does not have; use 'bf16'")
    twin = copy.deepcopy(model).cpu().eval().requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return quantize.quantize_dynamic(twin, {nn.Linear}, dtype=torch.qint8, inplace=True)


#: Nominal dense bf16 peak FLOP/s of common GPUs (vendor data sheets): the denominator of the
#: model FLOPs utilisation (MFU) that ``perf/`` and the pre-training log print on CUDA.
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
                 "A10": 125e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def nominal_peak_flops(device: torch.device | str) -> float | None:
    """The nominal bf16 peak of a CUDA device (:data:`GPU_PEAK_BF16`); None on a CPU or an unknown GPU."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)


def padding_mask(lengths: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Boolean ``(batch, frames)``: True where the frame is real (index < length)."""
    return torch.arange(n_frames, device=lengths.device)[None, :] < lengths[:, None]


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class TransformerLayer(nn.Module):
    """One BERT layer: multi-head self-attention + FFN, Post-LN or Pre-LN."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.ff1 = nn.Linear(cfg.hidden, cfg.ffn)
        self.ff2 = nn.Linear(cfg.ffn, cfg.hidden)
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def attention(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, h = x.shape
        n_heads = self.cfg.n_heads
        # contiguous (B, heads, T, d) copies: the CPU flash kernel runs 10-30 % faster on them than on
        # the strided view (measured in bf16 at 1294 frames), with bit-identical results
        q, k, v = self.qkv(x).view(b, t, 3, n_heads, h // n_heads).permute(2, 0, 3, 1, 4).contiguous()
        p = self.cfg.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, t, h))

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        # No dropout on the (B, T, ffn) intermediate: BERT has none there, and on CPU drawing
        # a mask 4x the hidden size costs more than the rest of the element-wise work.
        act = F.gelu if self.cfg.activation == "gelu" else F.relu
        return self.ff2(act(self.ff1(x)))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.norm == "pre":
            x = x + self.drop(self.attention(self.norm1(x), attn_mask))
            return x + self.drop(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attention(x, attn_mask)))
        return self.norm2(x + self.drop(self.ffn(x)))


class Enrichment(nn.Module):
    """Time-distributed dense layers (M3BERT's multi-task enrichment layer)."""

    def __init__(self, n_in: int, cfg: EnrichmentConfig) -> None:
        super().__init__()
        if cfg.n_layers < 1:
            raise ConfigError(f"model.enrichment.n_layers={cfg.n_layers}; expected >= 1")
        dim = cfg.dim or n_in
        self.layers = nn.ModuleList(nn.Linear(n_in if i == 0 else dim, dim) for i in range(cfg.n_layers))
        self.drop = nn.Dropout(cfg.dropout)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.drop(F.gelu(layer(x)))
        return x


class Encoder(ModelBase):
    """M2BERT encoder; with ``cfg.enrichment`` set, an M3BERT model.

    ``forward(frames (B, T, n_input), lengths (B,)) -> list of (B, T, D_l)`` hidden states.
    """

    architecture = "m2bert"

    def __init__(self, cfg: EncoderConfig, *, feature_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        # Description of the feature set the model was trained on (FeatureSet.to_dict()).
        # FeatureSet.to_dict() of the features it reads (name, config, CMVN stats): a plain
        # description, stored as "feature_set" in config.json; embed rebuilds the FeatureSet from it
        self.feature_config = feature_config
        self.input_proj = nn.Linear(cfg.n_input, cfg.hidden)
        if cfg.positional == "learned":
            self.pos = nn.Parameter(torch.zeros(cfg.max_frames, cfg.hidden))
            nn.init.normal_(self.pos, std=0.02)
        else:
            self.register_buffer("pos", sinusoidal_positions(cfg.max_frames, cfg.hidden), persistent=False)
        self.input_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.input_drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.norm == "pre" else None
        self.enrichment = Enrichment(cfg.hidden, cfg.enrichment) if cfg.enrichment is not None else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- shape facts -------------------------------------------------------------------------
    @property
    def n_hidden_states(self) -> int:
        """Entries returned by ``forward``: embedding + L layers (+ enrichment)."""
        return 1 + self.cfg.n_layers + (1 if self.enrichment is not None else 0)

    @property
    def layer_dims(self) -> list[int]:
        dims = [self.cfg.hidden] * (1 + self.cfg.n_layers)
        if self.enrichment is not None:
            dims.append(self.enrichment.out_dim)
        return dims

    def flops_per_frame(self, n_frames: int) -> float:
        """Forward FLOPs per frame of a ``(batch, n_frames)`` input (2 per multiply-add: the linear
        layers, Q K^T and A V); element-wise work is not counted. Training costs ~3x this (the
        backward pass 2x). The yardstick of model FLOPs utilisation (MFU) in ``perf/``."""
        c = self.cfg
        linear = c.n_input * c.hidden + c.n_layers * (4 * c.hidden * c.hidden + 2 * c.hidden * c.ffn)
        if self.enrichment is not None:
            linear += sum(layer.in_features * layer.out_features for layer in self.enrichment.layers)
        attention = c.n_layers * 2 * int(n_frames) * c.hidden  # scores and weighted values, every head
        return 2.0 * (linear + attention)

    def num_parameters(self, *, include_enrichment: bool = True) -> int:
        return sum(
            p.numel() for n, p in self.named_parameters() if include_enrichment or not n.startswith("enrichment.")
        )

    # -- forward -----------------------------------------------------------------------------
    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        if frames.dim() != 3 or frames.shape[-1] != self.cfg.n_input:
            raise ConfigError(
                f"encoder input must be (batch, frames, {self.cfg.n_input}), got {tuple(frames.shape)}"
            )
        b, t, _ = frames.shape
        if t > self.cfg.max_frames:
            raise ConfigError(f"sequence of {t} frames exceeds model.max_frames={self.cfg.max_frames}; window it")
        attn_mask = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
            if lengths.shape != (b,) or bool((lengths < 1).any()) or bool((lengths > t).any()):
                raise ConfigError(
                    f"lengths must be (batch,)=({b},) with values in [1, {t}], got {lengths.tolist()}"
                )
            valid = padding_mask(lengths.to(frames.device), t)
            if not bool(valid.all()):
                attn_mask = valid[:, None, None, :]  # (B, 1, 1, T): True = may attend
        x = self.input_proj(frames) + self.pos[:t].to(frames.dtype)
        x = self.input_drop(self.input_norm(x))
        states = [x]
        for i, layer in enumerate(self.layers):
            x = layer(x, attn_mask)
            if self.final_norm is not None and i == len(self.layers) - 1:
                x = self.final_norm(x)
            states.append(x)
        if self.enrichment is not None:
            states.append(self.enrichment(x))
        return states


register_architecture("m2bert", config_cls=EncoderConfig, model_cls=Encoder,
                      description="M2BERT/M3BERT: BERT-style transformer over feature frames (+ enrichment layer)")
# Paper Table 2. Small = 29.4M parameters with FFN 3072 (paper: 29.3M). Large with the standard
# BERT FFN of 4x hidden = 4096 has 102.5M parameters, not the paper's 93.1M (which an FFN of
# ~3.6k would give); we ship the standard 4x FFN and document the difference.
register_model_config("m2bert-small", hidden=768, n_layers=4, n_heads=12, ffn=3072)
register_model_config("m2bert-large", hidden=1024, n_layers=8, n_heads=16, ffn=4096)
# CPU-sized configs for tests and the demo.
register_model_config("m2bert-tiny", hidden=64, n_layers=2, n_heads=4, ffn=128, dropout=0.1)
register_model_config("m2bert-mini", hidden=192, n_layers=4, n_heads=4, ffn=768, dropout=0.1)
