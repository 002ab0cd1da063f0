"""Architectures: the registry of encoder families and the model folder every one of them reads and writes.

An *architecture* is a config dataclass (``from_dict`` / ``to_dict``) plus a module class built as
``model_cls(cfg, feature_config=...)`` (:class:`ModelBase`). Two are registered: ``m2bert`` (the
M2BERT/M3BERT transformer, :mod:`m3bert.models.encoder`) and ``kim-cnn`` (Kim et al. 2020's 2-D CNN
with its multi-source branches, :mod:`m3bert.models.kim`). A *named model config*
(``create_model("m2bert-small")``, ``random:kim-cnn``) is an architecture, its settings and the
feature set a random model of it reads.

The model folder (``config.json`` + ``model.safetensors``) is one format for every architecture::

    {"format": "m3bert-model", "format_version": 1, "architecture": "kim-cnn", "model": {...},
     "feature_set": {...}, "n_parameters": N, ...extra}

A folder without ``"architecture"`` (every folder written before architectures existed) is an
``m2bert`` folder and loads bit-identically; model ids do not involve the key for ``m2bert``.

Every model satisfies the interface the Embedder uses: ``cfg`` (with ``n_input``, ``max_frames``),
``feature_config``, ``n_hidden_states``, ``layer_dims``, ``num_parameters()``,
``save_pretrained(dir)`` and ``forward(frames (B, T, C), lengths (B,)) -> [(B, T, D_i), ...]``
with ``T`` preserved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from m3bert.core.errors import CheckpointError, ConfigError
from m3bert.core.io import atomic_path, atomic_write_json, read_format_json
from m3bert.core.registry import Registry
from m3bert.core.version import __version__

MODEL_FORMAT = "m3bert-model"
MODEL_FORMAT_VERSION = 1
DEFAULT_ARCHITECTURE = "m2bert"  # the architecture of a model folder whose config.json names none


@dataclass(frozen=True)
class Architecture:
    """A registered encoder family."""

    name: str  # "m2bert" | "kim-cnn" | ...
    config_cls: type  # dataclass with from_dict(dict) / to_dict()
    model_cls: type  # ModelBase subclass, built as model_cls(cfg, feature_config=...)
    description: str = ""  # one line for listings


@dataclass(frozen=True)
class NamedConfig:
    """A registered model config: architecture + settings + the feature set of a random model of it."""

    architecture: str  # registered architecture name
    config: dict[str, Any] = field(default_factory=dict)  # config keyword arguments
    feature_set: str = "m3bert324"  # feature set ``random:NAME`` reads
    feature_options: dict[str, Any] = field(default_factory=dict)  # its config overrides (e.g. n_mels)


ARCHITECTURES = Registry("architecture")  # name -> Architecture
MODEL_CONFIGS = Registry("model config")  # name -> NamedConfig


def register_architecture(name: str, *, config_cls: type, model_cls: type, description: str = "") -> Architecture:
    """Register an encoder family (its ``model_cls.architecture`` must equal ``name``)."""
    if getattr(model_cls, "architecture", None) != name:
        raise ConfigError(f"architecture {name!r}: {model_cls.__name__}.architecture is "
                          f"{getattr(model_cls, 'architecture', None)!r}, expected {name!r}")
    return ARCHITECTURES.add(name, Architecture(name, config_cls, model_cls, description))


def get_architecture(name: str) -> Architecture:
    return ARCHITECTURES.lookup(name)


def register_model_config(name: str, *, architecture: str = DEFAULT_ARCHITECTURE, feature_set: str = "m3bert324",
                          feature_options: dict[str, Any] | None = None, **config: Any) -> None:
    """Register a named config of ``architecture`` (validated now) and the feature set a random model of it reads."""
    get_architecture(architecture).config_cls.from_dict(dict(config))
    MODEL_CONFIGS.add(name, NamedConfig(architecture, dict(config), feature_set, dict(feature_options or {})))


def available_models() -> list[str]:
    return sorted(MODEL_CONFIGS)


def named_config(name: str) -> NamedConfig:
    return MODEL_CONFIGS.lookup(name)


def get_model_config(name: str, **overrides: Any) -> Any:
    """The config object (of the right architecture) of a registered name, with overrides."""
    entry = named_config(name)
    return get_architecture(entry.architecture).config_cls.from_dict({**entry.config, **overrides})


def create_model(name: str, *, seed: int | None = None, **overrides: Any) -> "ModelBase":
    """Create a randomly initialised registered model (seeded when ``seed`` is given)."""
    entry = named_config(name)
    arch = get_architecture(entry.architecture)
    cfg = arch.config_cls.from_dict({**entry.config, **overrides})
    if seed is None:
        return arch.model_cls(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return arch.model_cls(cfg)


def architecture_of(config: dict[str, Any]) -> str:
    """The architecture a ``config.json`` content names (``m2bert`` when it names none)."""
    name = config.get("architecture", DEFAULT_ARCHITECTURE) if isinstance(config, dict) else DEFAULT_ARCHITECTURE
    return name if isinstance(name, str) else repr(name)


class ModelBase(nn.Module):
    """What every architecture shares: the model folder (``save_pretrained`` / ``from_pretrained``)."""

    architecture: ClassVar[str] = ""
    cfg: Any
    feature_config: dict[str, Any] | None

    @property
    def n_hidden_states(self) -> int:  # pragma: no cover - every architecture overrides it
        raise NotImplementedError

    @property
    def layer_dims(self) -> list[int]:  # pragma: no cover - every architecture overrides it
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": MODEL_FORMAT})
        config = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "architecture": self.architecture,
            "m3bert_version": __version__,
            "model": self.cfg.to_dict(),
            "feature_set": self.feature_config,
            "n_parameters": self.num_parameters(),
        }
        if extra:
            config.update(extra)
        atomic_write_json(directory / "config.json", config)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, expect_model: dict[str, Any] | None = None,
                        expect_feature_set: dict[str, Any] | None = None, map_location: str = "cpu") -> Any:
        """Load a model directory; refuse (``CheckpointError``) anything that does not match.

        On :class:`ModelBase` itself any registered architecture loads; on a subclass
        (``Encoder.from_pretrained``) a folder of another architecture is refused.
        """
        model = load_model_dir(directory, expect_model=expect_model, expect_feature_set=expect_feature_set,
                               map_location=map_location)
        if cls is not ModelBase and not isinstance(model, cls):
            raise CheckpointError(f"{directory}: holds a {model.architecture!r} model, not a {cls.architecture!r} one; "
                                  "load it with m3bert.models.hub.load_encoder (any architecture)")
        return model


def load_model_dir(directory: str | Path, *, expect_model: dict[str, Any] | None = None,
                   expect_feature_set: dict[str, Any] | None = None, map_location: str = "cpu") -> ModelBase:
    """Read a model directory of any registered architecture; ``CheckpointError`` names what is wrong."""
    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise CheckpointError(f"{directory}: missing {p.name}; a model directory holds config.json + model.safetensors")
    config = read_format_json(cfg_path, fmt=MODEL_FORMAT, max_version=MODEL_FORMAT_VERSION)
    name = architecture_of(config)
    if name not in ARCHITECTURES:
        raise CheckpointError(f"{cfg_path}: architecture={name!r} is not registered; known: {sorted(ARCHITECTURES)}")
    arch = get_architecture(name)
    try:
        mcfg = arch.config_cls.from_dict(config["model"])
    except (KeyError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{cfg_path}: invalid 'model' section ({exc})") from exc
    if expect_model is not None:
        check_same("model", arch.config_cls.from_dict(expect_model).to_dict(), mcfg.to_dict(), cfg_path)
    if expect_feature_set is not None:
        check_same("feature_set", expect_feature_set, config.get("feature_set"), cfg_path)
    model = arch.model_cls(mcfg, feature_config=config.get("feature_set"))
    try:
        state = load_file(str(weights), device=map_location)
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{weights}: cannot read safetensors ({exc})") from exc
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{weights}: non-finite weights (NaN/inf) in {bad[:5]}{' ...' if len(bad) > 5 else ''}; "
                              "the run that wrote them diverged: retrain from an earlier checkpoint or with a lower lr")
    load_state_checked(model, state, where=str(weights))
    model.config_extra = {k: v for k, v in config.items() if k not in ("model", "feature_set")}
    return model


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], *, where: str) -> None:
    """``load_state_dict`` that reports missing/unexpected keys and shape mismatches clearly."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{where}: weights do not match the architecture; missing={missing[:5]} "
            f"unexpected={unexpected[:5]} shape mismatches={shapes[:5]}"
        )
    module.load_state_dict(state, strict=True)


def check_same(what: str, expected: Any, found: Any, where: Path | str) -> None:
    """Raise ``CheckpointError`` listing the keys where ``found`` differs from ``expected``."""
    if expected == found:
        return
    if isinstance(expected, dict) and isinstance(found, dict):
        diffs = [f"{k}: expected {expected.get(k)!r}, found {found.get(k)!r}"
                 for k in sorted(set(expected) | set(found)) if expected.get(k) != found.get(k)]
    else:
        diffs = [f"expected {expected!r}, found {found!r}"]
    raise CheckpointError(f"{where}: {what} differs: " + "; ".join(diffs[:8]))
