"""``m3bert export``: a run (pre-training or multi-task) or checkpoint -> a clean model directory.

The output holds exactly ``config.json`` + ``model.safetensors``: no optimiser state, no heads,
nothing a user of the embeddings does not need. The checkpoint is fully validated first (format,
architecture vs weights, feature set rebuildable and matching the encoder's input width); the
weights file is copied byte for byte (so the model id is unchanged) and ``config.json`` gains an
``export`` record naming the source. The directory is assembled under a temporary name next to
``--out`` and renamed into place, so a crash never leaves a half-written model directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from m3bert.errors import CheckpointError

HELP = "Export a run or checkpoint to a clean model directory (config.json + model.safetensors)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory (best, else last checkpoint), checkpoint or model dir")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--checkpoint", choices=("best", "last"), default=None,
                   help="which checkpoint of a run (default: best if present, else last)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    info = export_model(args.run, args.out, checkpoint=args.checkpoint, overwrite=args.overwrite)
    print(f"exported {info['source']} -> {info['out']} (model id {info['model_id']}, "
          f"{info['n_parameters']:,} parameters, {info['n_hidden_states']} hidden states)")
    return 0


def _source_dir(run: Path, checkpoint: str | None) -> Path:
    from m3bert.embed import resolve_model_dir

    if checkpoint is None:
        return resolve_model_dir(run)
    if not (run / "run.json").is_file():
        raise CheckpointError(f"{run}: --checkpoint {checkpoint} needs a run directory (run.json), none found")
    return resolve_model_dir(run / "checkpoints" / checkpoint)


def export_model(run: str | os.PathLike, out: str | os.PathLike, *, checkpoint: str | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Validate the model behind ``run`` and write ``out`` = config.json + model.safetensors."""
    from m3bert.embed import Embedder
    from m3bert.io import atomic_write_json, read_json
    from m3bert.models.encoder import Encoder

    run, out = Path(run), Path(out)
    src = _source_dir(run, checkpoint)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: already exists; pass --overwrite to replace it")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise CheckpointError(f"{out}: must not be (inside) the source {src}")
    embedder = Embedder(Encoder.from_pretrained(src), source=str(src))  # validates everything
    run_kind = None
    for parent in (src, *src.parents[:3]):
        if (parent / "run.json").is_file():
            try:
                run_kind = read_json(parent / "run.json").get("kind")
            except (OSError, json.JSONDecodeError, AttributeError):
                run_kind = None
            break
    config = read_json(src / "config.json")
    config["export"] = {"source": str(src.resolve()), "run_kind": run_kind, "model_id": embedder.model_id}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        shutil.copyfile(src / "model.safetensors", tmp / "model.safetensors")
        atomic_write_json(tmp / "config.json", config)
        check = Embedder(Encoder.from_pretrained(tmp), source=str(tmp))
        if check.model_id != embedder.model_id:  # pragma: no cover - would be a copy bug
            raise CheckpointError(f"{tmp}: exported model differs from {src} (model id)")
        if out.exists():
            if not out.is_dir():
                out.unlink()
                os.replace(tmp, out)
            else:
                old = out.with_name(f".{out.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(out, old)  # the old model stays on disk until the new one is in place
                os.replace(tmp, out)
                shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"source": str(src), "out": str(out), "model_id": embedder.model_id, "run_kind": run_kind,
            "n_parameters": embedder.encoder.num_parameters(), "n_hidden_states": embedder.n_hidden_states}
