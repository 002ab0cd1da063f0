"""Trainer checkpoints: a model directory plus trainer files, written atomically, never pickled.

A checkpoint directory is::

    config.json, model.safetensors    the encoder's model directory (Encoder.save_pretrained)
    <name>.safetensors                one per extra module (e.g. head.safetensors)
    optimizer.safetensors             optimizer tensors (state/<param index>/<key>) and the torch RNG state(s)
    state.json                        step, optimizer hyper-parameters and scalar state, numpy/python
                                      RNG states, and whatever JSON the trainer adds

so ``Encoder.from_pretrained(checkpoint)`` works on it directly. The whole directory is written
under a temporary name next to the destination and swapped in by renames, so a crash leaves
either the previous checkpoint or the new one, never a mix (:func:`recover_checkpoint` puts
the previous one back if the crash fell between the two renames).

Nothing here knows about pre-training: ``m3bert finetune`` saves its encoder, task heads and
optimizer with the same two functions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from m3bert.core.errors import CheckpointError, TrainingError
from m3bert.core.io import atomic_write_json, read_format_json, recover_dir, remove_stale_temps, replace_dir
from m3bert.models.encoder import check_same, load_state_checked

STATE_FORMAT = "m3bert-trainer-state"
STATE_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# RNG states (JSON + one uint8 tensor per torch generator)
# ---------------------------------------------------------------------------------------------


def capture_rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Global RNG states: (JSON-able python/numpy states, torch states as uint8 tensors)."""
    py = random.getstate()
    np_state = np.random.get_state()
    json_state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": np_state[0], "key": np_state[1].tolist(), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return json_state, tensors


def restore_rng_state(json_state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only if as many devices exist)."""
    if "python" in json_state:
        v, key, gauss = json_state["python"]
        random.setstate((v, tuple(key), gauss))
    if "numpy" in json_state:
        s = json_state["numpy"]
        np.random.set_state((s["kind"], np.asarray(s["key"], dtype=np.uint32), s["pos"], s["has_gauss"],
                             s["cached_gaussian"]))
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() >= len(cuda):
        torch.cuda.set_rng_state_all([tensors[k].to(torch.uint8) for k in cuda])


# ---------------------------------------------------------------------------------------------
# Optimizer state <-> (tensors, JSON)
# ---------------------------------------------------------------------------------------------


def optimizer_state_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-able tensors and a JSON description."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"class": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}


def optimizer_state_from_flat(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], *, where: str
) -> None:
    """Load what :func:`optimizer_state_to_flat` wrote, checking class, groups and shapes."""
    if meta.get("class") != type(optimizer).__name__:
        raise CheckpointError(f"{where}: optimizer is {meta.get('class')!r}, expected {type(optimizer).__name__!r}")
    own = optimizer.state_dict()
    groups = meta.get("param_groups") or []
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in own["param_groups"]]:
        raise CheckpointError(
            f"{where}: optimizer parameter groups differ: file {[len(g['params']) for g in groups]} params per group, "
            f"model {[len(g['params']) for g in own['param_groups']]}"
        )
    params = [p for g in optimizer.param_groups for p in g["params"]]
    index = {pid: p for pid, p in zip([i for g in own["param_groups"] for i in g["params"]], params)}
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, idx, key = name.split(".", 2)
        pid = int(idx)
        if pid not in index:
            raise CheckpointError(f"{where}: optimizer state for parameter {pid}, which the model does not have")
        param = index[pid]
        if value.dim() > 0 and tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{where}: optimizer state {key} of parameter {pid} has shape {tuple(value.shape)}, "
                f"the parameter has {tuple(param.shape)}"
            )
        state.setdefault(pid, {})[key] = value.to(param.device) if value.dim() > 0 else value
    for idx, entries in (meta.get("scalars") or {}).items():
        state.setdefault(int(idx), {}).update(entries)
    fixed_groups = []
    for g in groups:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        fixed_groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": fixed_groups})


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module | None = None,
    modules: Mapping[str, nn.Module] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: Mapping[str, Any] | None = None,
    model_extra: Mapping[str, Any] | None = None,
    include_rng: bool = True,
) -> Path:
    """Write a checkpoint directory atomically (temp dir + rename) and return its path.

    ``model`` is saved with its ``save_pretrained(dir, extra=model_extra)`` (an ``Encoder``);
    ``modules`` as ``<name>.safetensors``; ``state`` must be JSON-serialisable.
    """

    for owner, module in ([("model", model)] if model is not None else []) + list((modules or {}).items()):
        bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise TrainingError(f"{directory}: refusing to save non-finite weights (NaN/inf) of {owner} in {bad[:5]}; "
                                "the run diverged (lower optim.lr)")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if model is not None:
            model.save_pretrained(tmp, extra=dict(model_extra or {}))
        for name, module in (modules or {}).items():
            if not name.replace("_", "").replace("-", "").isalnum():
                raise CheckpointError(f"module name {name!r}: expected letters, digits, '-' or '_'")
            tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(tensors, str(tmp / f"{name}.safetensors"), metadata={"format": STATE_FORMAT})
        payload: dict[str, Any] = {"format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION,
                                   "modules": sorted(modules or {}), "state": dict(state or {})}
        opt_tensors: dict[str, torch.Tensor] = {}
        if optimizer is not None:
            opt_tensors, payload["optimizer"] = optimizer_state_to_flat(optimizer)
        if include_rng:
            payload["rng"], rng_tensors = capture_rng_state()
            opt_tensors.update(rng_tensors)
        if opt_tensors:
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"format": STATE_FORMAT})
        atomic_write_json(tmp / "state.json", payload)
        replace_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def recover_checkpoint(directory: str | Path) -> Path | None:
    """Return ``directory`` if it exists; else restore a ``.NAME.old-*`` left by a crash mid-swap.

    Then removes what killed saves left beside it (``.NAME.tmp-PID`` of dead processes, redundant
    ``.old`` copies), so every run start or resume cleans up after an earlier kill -9."""
    found = recover_dir(directory)
    remove_stale_temps(Path(directory).parent)
    return found


def read_state(directory: str | Path) -> dict[str, Any]:
    """The ``state.json`` payload of a checkpoint directory (validated)."""
    path = Path(directory) / "state.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no state.json; not a trainer checkpoint")
    return read_format_json(path, fmt=STATE_FORMAT, max_version=STATE_FORMAT_VERSION)


def load_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module | None = None,
    modules: Mapping[str, nn.Module] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint into existing objects and return the trainer's JSON ``state``.

    ``model`` (an ``Encoder``) must have the same architecture (``cfg``) and feature set as
    the checkpoint, else ``CheckpointError`` names the differences.
    """

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    payload = read_state(directory)
    if model is not None:
        cfg_path = directory / "config.json"
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{cfg_path}: unreadable model config ({exc})") from exc
        check_same("model", model.cfg.to_dict(), config.get("model"), cfg_path)
        check_same("feature_set", getattr(model, "feature_config", None), config.get("feature_set"), cfg_path)
        load_state_checked(model, _load(directory / "model.safetensors", map_location), where=str(cfg_path.parent))
    missing = sorted(set(modules or {}) - set(payload.get("modules", [])))
    if missing:
        raise CheckpointError(f"{directory}: no weights for module(s) {missing}; it holds {payload.get('modules')}")
    for name, module in (modules or {}).items():
        load_state_checked(module, _load(directory / f"{name}.safetensors", map_location),
                           where=str(directory / f"{name}.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    if (directory / "optimizer.safetensors").is_file():
        tensors = _load(directory / "optimizer.safetensors", "cpu")
    if optimizer is not None:
        if "optimizer" not in payload:
            raise CheckpointError(f"{directory}: holds no optimizer state")
        optimizer_state_from_flat(optimizer, tensors, payload["optimizer"], where=str(directory))
    if restore_rng and "rng" in payload:
        restore_rng_state(payload["rng"], tensors)
    return payload["state"]


def _load(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:

    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: cannot read safetensors ({exc})") from exc
