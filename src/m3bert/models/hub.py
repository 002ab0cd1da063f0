"""Finding, loading, identifying and exporting models: the one place that resolves a model spec.

A *model directory* is ``config.json`` (``format: m3bert-model``, the architecture, the feature
set it was trained on) + ``model.safetensors``, written and read for every registered architecture
by :mod:`m3bert.models.base` (``save_pretrained`` / :func:`~m3bert.models.base.load_model_dir`). A *run directory* holds
``run.json`` and ``checkpoints/{best,last}/`` (each a model directory plus trainer files). A
*model spec* is either of those, a checkpoint directory, or ``random:CONFIG[:SEED]`` (the
untrained baseline of a named config, with the feature set that config names).

* :func:`resolve_model_dir` - spec path -> the model directory to load
* :func:`load_encoder` - spec -> ``(model of any architecture, source)``
* :func:`model_id` / :func:`weights_digest` - content hashes (the one weight hash of the package)
* :func:`export_model` - a run or checkpoint -> a clean model directory
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m3bert.core.errors import CheckpointError, ConfigError, DataError, M3bertError
from m3bert.core.io import atomic_write_json, make_temp_dir, read_json, replace_dir
from m3bert.features import feature_set_from_dict, get_feature_set
from m3bert.models import kim as _kim  # noqa: F401  (registers the kim-cnn architecture)
from m3bert.models.base import DEFAULT_ARCHITECTURE, MODEL_FORMAT, ModelBase, create_model, load_model_dir, named_config

DEFAULT_FEATURE_SET = "m3bert324"  # feature set of the m2bert ``random:`` models (the paper's 324-d frames)

def is_model_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("format") == MODEL_FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model directory, a run directory (``checkpoints/best``, else ``checkpoints/last``) or a
    checkpoint directory -> the model directory to load. ``CheckpointError`` says what was found."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory; expected a model directory, a run directory or 'random:CONFIG[:SEED]'")
    if not path.is_dir():
        raise CheckpointError(f"{path}: is a file; expected a model directory (config.json + model.safetensors) or a run directory")
    if is_model_dir(path):
        return path
    if (path / "config.json").is_file():
        try:
            fmt = json.loads((path / "config.json").read_text(encoding="utf-8")).get("format")
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise CheckpointError(f"{path / 'config.json'}: not a valid JSON object ({exc})") from exc
        raise CheckpointError(f"{path / 'config.json'}: format={fmt!r}, expected 'm3bert-model'")
    if (path / "run.json").is_file():
        tried = []
        for name in ("best", "last"):
            ckpt = path / "checkpoints" / name
            if is_model_dir(ckpt):
                return ckpt
            tried.append(str(ckpt))
        raise CheckpointError(
            f"{path}: run directory without a usable checkpoint; looked for a model directory "
            f"(config.json with format 'm3bert-model' + model.safetensors) in {tried}"
        )
    raise CheckpointError(
        f"{path}: neither a model directory (config.json + model.safetensors) nor a run directory "
        f"(run.json + checkpoints/); found {sorted(p.name for p in path.iterdir())[:10]}"
    )


def _parse_random_spec(spec: str) -> tuple[str, int]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] != "random" or not parts[1]:
        raise ConfigError(f"model spec {spec!r}; expected 'random:CONFIG' or 'random:CONFIG:SEED'")
    seed = 0
    if len(parts) == 3:
        try:
            seed = int(parts[2])
        except ValueError:
            raise ConfigError(f"model spec {spec!r}: seed {parts[2]!r} is not an integer") from None
    return parts[1], seed


def load_encoder(spec: str | os.PathLike) -> tuple[Any, str]:
    """Load the encoder behind ``spec``; returns ``(encoder, source description)``."""

    if isinstance(spec, str) and spec.startswith("random:"):

        name, seed = _parse_random_spec(spec)
        encoder = create_model(name, seed=seed)
        entry = named_config(name)
        feature_set = get_feature_set(entry.feature_set, **entry.feature_options)
        if feature_set.n_channels != encoder.cfg.n_input:
            raise ConfigError(
                f"{spec}: model config {name!r} takes {encoder.cfg.n_input} input channels but its "
                f"feature set {entry.feature_set!r} has {feature_set.n_channels}"
            )
        encoder.feature_config = feature_set.to_dict()
        return encoder, f"random:{name}:{seed}"
    model_dir = resolve_model_dir(spec)
    return load_model_dir(model_dir), str(model_dir)


def weights_digest(module: nn.Module) -> str:
    """SHA-1 (hex) of every tensor of ``module.state_dict()``: names, dtypes, shapes and bytes."""
    h = hashlib.sha1()
    _update_with_state(h, module)
    return h.hexdigest()


def _update_with_state(h: Any, module: nn.Module) -> None:
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # reshape: 0-d tensors (BN counters)


def model_id(encoder: ModelBase, feature_set: dict[str, Any]) -> str:
    """SHA-1 (16 hex) of the architecture, the feature-set description and every weight (a cache key).

    The architecture's name enters the hash for every architecture but ``m2bert``, so the ids of
    M2BERT/M3BERT models are those they always had."""
    h = hashlib.sha1()
    meta = {"model": encoder.cfg.to_dict(), "feature_set": feature_set}
    arch = getattr(encoder, "architecture", DEFAULT_ARCHITECTURE)
    if arch != DEFAULT_ARCHITECTURE:
        meta["architecture"] = arch
    h.update(json.dumps(meta, sort_keys=True, default=str).encode("utf-8"))
    _update_with_state(h, encoder)
    return h.hexdigest()[:16]


def check_feature_set(encoder: ModelBase, *, source: str) -> Any:
    """Rebuild the encoder's feature set and check its width; ``CheckpointError`` naming ``source``."""
    if not encoder.feature_config:
        raise CheckpointError(
            f"{source}: the model has no feature_set in its config; it cannot embed audio "
            "(expected the FeatureSet.to_dict() it was trained on)"
        )
    try:
        feature_set = feature_set_from_dict(encoder.feature_config)
    except M3bertError as exc:
        raise CheckpointError(f"{source}: cannot rebuild the model's feature set ({exc})") from exc
    if int(feature_set.n_channels) != int(encoder.cfg.n_input):
        raise CheckpointError(
            f"{source}: feature set {feature_set.name!r} gives {feature_set.n_channels} channels "
            f"but the encoder expects n_input={encoder.cfg.n_input}"
        )
    return feature_set


def _source_dir(run: Path, checkpoint: str | None) -> Path:
    if checkpoint is None:
        return resolve_model_dir(run)
    if not (run / "run.json").is_file():
        raise CheckpointError(f"{run}: --checkpoint {checkpoint} needs a run directory (run.json), none found")
    return resolve_model_dir(run / "checkpoints" / checkpoint)


MODEL_FILES = ("config.json", "model.safetensors")  # all a model folder holds


def _check_export_target(out: Path, *, sources: tuple[Path, ...], overwrite: bool) -> None:
    """Refuse an ``out`` whose replacement could destroy anything but an earlier exported model.

    ``out`` must not equal, contain or lie inside a source (the run or the checkpoint); an existing
    ``out`` is replaced only with ``overwrite`` and only when it is a model folder holding nothing
    but :data:`MODEL_FILES` (never a run, a parent of runs, or an unrelated folder or file).
    """
    target = out.resolve()
    for s in sources:
        s = s.resolve()
        if target == s or target in s.parents or s in target.parents:
            relation = "is" if target == s else ("contains" if target in s.parents else "is inside")
            raise CheckpointError(f"--out {out} {relation} the source {s}; choose a folder outside the run")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise CheckpointError(f"{out}: already exists; pass --overwrite to replace an earlier exported model")
    if not out.is_dir() or out.is_symlink():
        raise CheckpointError(f"--out {out} exists and is not a folder; refusing to replace it (remove it yourself)")
    entries = sorted(p.name for p in out.iterdir())
    if not is_model_dir(out) or set(entries) - set(MODEL_FILES):
        raise CheckpointError(
            f"--out {out} exists and is not an exported model folder (it holds {entries[:8]}"
            f"{' ...' if len(entries) > 8 else ''}; a model folder holds only {list(MODEL_FILES)}); "
            "refusing to replace it: choose a new --out or remove it yourself")


def export_model(run: str | os.PathLike, out: str | os.PathLike, *, checkpoint: str | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Validate the model behind ``run`` and write ``out`` = config.json + model.safetensors.

    The output holds exactly those two files: no optimiser state, no heads. The checkpoint is
    fully validated first (format, architecture vs weights, feature set rebuildable and matching
    the encoder's input width); the weights file is copied byte for byte (so the model id is
    unchanged) and ``config.json`` gains an ``export`` record naming the source. The folder is
    assembled under a temporary name next to ``out`` and swapped in atomically.
    """
    run, out = Path(run), Path(out)
    src = _source_dir(run, checkpoint)
    _check_export_target(out, sources=(run, src), overwrite=overwrite)
    encoder = load_model_dir(src)  # validates format, architecture and weights
    source_id = model_id(encoder, check_feature_set(encoder, source=str(src)).to_dict())
    run_kind = None
    for parent in (src, *src.parents[:3]):
        if (parent / "run.json").is_file():
            try:
                run_kind = read_json(parent / "run.json").get("kind")
            except (OSError, DataError, AttributeError):
                run_kind = None
            break
    config = read_json(src / "config.json")
    config["export"] = {"source": str(src.resolve()), "run_kind": run_kind, "model_id": source_id}
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.")
    try:
        shutil.copyfile(src / "model.safetensors", tmp / "model.safetensors")
        atomic_write_json(tmp / "config.json", config)
        check = load_model_dir(tmp)
        if model_id(check, check_feature_set(check, source=str(tmp)).to_dict()) != source_id:  # pragma: no cover
            raise CheckpointError(f"{tmp}: exported model differs from {src} (model id)")
        replace_dir(tmp, out)  # the old model stays on disk until the new one is in place
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"source": str(src), "out": str(out), "model_id": source_id, "run_kind": run_kind,
            "n_parameters": encoder.num_parameters(), "n_hidden_states": encoder.n_hidden_states}
