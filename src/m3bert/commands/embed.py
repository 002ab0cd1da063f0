"""``m3bert embed``: embeddings of a folder (or list) of audio files, resumable.

Output, ``--format npy`` (default): ``OUT/<relative path of the input>.npy`` per input file
(the full input name is kept, so ``song.wav`` and ``song.mp3`` never collide), ``OUT/embed.json``
(the settings and model id the folder was written with), ``OUT/index.jsonl`` (one line per
finished file: source path, output file, shape, layers, pooling, model id; at frame level the
frame times as ``first_frame_ms + i * frame_hop_ms``) and ``OUT/summary.json`` (counts, speed,
files that failed and why).

``--format h5``: one HDF5 file ``OUT`` with one group per input (mirroring the input tree);
each group holds ``embedding`` (and ``times_ms`` at frame level) and attributes; the file's
attributes hold the settings. It is written as ``OUT.partial`` and renamed when the run ends.

Rerunning the same command skips finished files (an index line whose ``.npy`` exists and whose
source file has the same size and modification time; in HDF5 a group marked complete) and
refuses to mix settings or models in one output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from m3bert.errors import ConfigError, DataError

HELP = "Embed audio files with a model (clip or frame level, any layers) into .npy files or one HDF5."

OUTPUT_FORMAT = "m3bert-embeddings"
SETTINGS_KEYS = ("model_id", "level", "layers", "pool", "dtype", "window_frames", "hop_frames", "feature_set")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="MUSIC_DIR_OR_FILES", help="audio files and/or folders (recursive)")
    p.add_argument("--model", required=True, help="model dir, run dir, checkpoint dir or random:CONFIG[:SEED]")
    p.add_argument("--out", required=True, help="output folder (npy) or .h5 file (h5)")
    p.add_argument("--level", choices=("clip", "frame"), default="clip", help="clip vectors or frame sequences")
    p.add_argument("--layers", default="-1", help="-1 (last), all, or comma-separated indices (0 = input embedding)")
    p.add_argument("--pool", choices=("mean", "meanstd"), default="mean", help="clip-level pooling over time")
    p.add_argument("--format", choices=("npy", "h5"), default="npy", dest="fmt", help="output format")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="encoder precision (bf16 = autocast)")
    p.add_argument("--batch-size", type=int, default=8, help="encoder windows per forward pass")
    p.add_argument("--window-frames", type=int, default=None, help="encoder window (default: the model's context)")
    p.add_argument("--hop-frames", type=int, default=None, help="hop between windows (default: window - window/6)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from m3bert.embed import load_model

    if args.threads:
        torch.set_num_threads(int(args.threads))
    embedder = load_model(args.model, device=args.device, dtype=args.dtype, window_frames=args.window_frames,
                          hop_frames=args.hop_frames)
    summary = embed_files(args.inputs, args.out, embedder=embedder, level=args.level, layers=args.layers,
                          pool=args.pool, fmt=args.fmt, batch_size=args.batch_size, strict=args.strict,
                          progress=not args.no_progress)
    print(format_summary(summary))
    return 1 if summary["n_failed"] and not (summary["n_done"] + summary["n_existing"]) else 0


# ---------------------------------------------------------------------------------------------


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, str]]:
    """``(source file, output key)`` pairs; the key mirrors the input tree.

    One folder: keys are paths relative to it. Several inputs: a folder's keys are prefixed with
    its name, a file's key is its name. Colliding keys are a ``DataError``.
    """
    from m3bert.audio import find_audio_files

    if not inputs:
        raise ConfigError("no inputs given; expected audio files and/or folders")
    pairs: list[tuple[Path, str]] = []
    several = len(inputs) > 1
    for raw in inputs:
        root = Path(raw)
        if root.is_dir():
            for f in find_audio_files(root):
                rel = f.relative_to(root).as_posix()
                pairs.append((f, f"{root.resolve().name}/{rel}" if several else rel))
        elif root.is_file():
            pairs.append((root, root.name))
        else:
            raise DataError(f"{root}: no such file or folder (expected audio files or folders)")
    seen: dict[str, Path] = {}
    for f, key in pairs:
        if key in seen and seen[key].resolve() != f.resolve():
            raise DataError(f"inputs {seen[key]} and {f} would both be written as {key!r}; pass them separately")
        seen[key] = f
    unique = {key: f for f, key in pairs}
    return [(f, key) for key, f in unique.items()]


def _settings(embedder: Any, *, level: str, layers: Any, pool: str) -> dict[str, Any]:
    from m3bert import __version__
    from m3bert.embed import parse_layers

    idx, squeeze = parse_layers(layers, embedder.n_hidden_states)
    return {
        "format": OUTPUT_FORMAT,
        "model_id": embedder.model_id,
        "model_source": embedder.source,
        "level": level,
        "layers": idx if not squeeze else idx[0],
        "pool": pool if level == "clip" else None,
        "dtype": embedder.dtype,
        "window_frames": embedder.window_frames,
        "hop_frames": embedder.hop_frames,
        "feature_set": {"name": embedder.feature_set.name, "hash": embedder.feature_set.config_hash()},
        "sample_rate": embedder.sample_rate,
        "frame_hop_ms": 1000.0 * embedder.feature_set.hop_length / embedder.sample_rate,
        "layer_dims": embedder.layer_dims,
        "m3bert_version": __version__,
    }


def _check_settings(existing: dict[str, Any], new: dict[str, Any], where: Path) -> None:
    diffs = [f"{k}: existing {existing.get(k)!r}, now {new.get(k)!r}" for k in SETTINGS_KEYS
             if existing.get(k) != new.get(k)]
    if diffs:
        raise DataError(f"{where} was written with different settings ({'; '.join(diffs)}); "
                        "use another --out or delete it")


def _source_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"source_size": int(st.st_size), "source_mtime_ns": int(st.st_mtime_ns)}


def _row(settings: dict[str, Any], src: Path, key: str, output: Any, n_samples: int,
         sample_rate: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    if settings["level"] == "frame":
        arr, times = output
    else:
        arr, times = output, None
    row = {"path": str(src), "key": key, "shape": list(arr.shape), "level": settings["level"],
           "layers": settings["layers"], "pool": settings["pool"], "model_id": settings["model_id"],
           "n_samples": int(n_samples), "duration_s": n_samples / sample_rate, **_source_stamp(src)}
    if times is not None:
        row.update(n_frames=int(times.shape[0]), first_frame_ms=float(times[0]) if times.size else 0.0,
                   frame_hop_ms=settings["frame_hop_ms"])
    return row, arr, times


def embed_files(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    embedder: Any,
    level: str = "clip",
    layers: Any = -1,
    pool: str = "mean",
    fmt: str = "npy",
    batch_size: int = 8,
    strict: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed every audio file under ``inputs`` into ``out``; returns the run summary.

    Resumable and atomic (see the module docstring). Bad files are skipped and listed in the
    summary (``strict=True`` raises on the first one instead).
    """
    if fmt not in ("npy", "h5"):
        raise ConfigError(f"format={fmt!r}; expected 'npy' or 'h5'")
    pairs = collect_inputs(inputs)
    if not pairs:
        raise DataError(f"no audio files found in {[str(i) for i in inputs]}")
    settings = _settings(embedder, level=level, layers=layers, pool=pool)
    writer = _NpyWriter(Path(out), settings) if fmt == "npy" else _H5Writer(Path(out), settings)
    t0 = time.perf_counter()
    failures: list[dict[str, str]] = []
    n_done = 0
    audio_s = 0.0
    try:
        todo = [(src, key) for src, key in pairs if not writer.is_done(src, key)]
        n_existing = len(pairs) - len(todo)
        results = embedder.iter_embed([src for src, _ in todo], level=level, layers=layers, pool=pool,
                                      batch_size=batch_size, progress=progress,
                                      errors="raise" if strict else "skip")
        for res in results:
            src, key = todo[res.index]
            if res.error is not None:
                failures.append({"path": str(src), "error": res.error})
                continue
            row, arr, times = _row(settings, src, key, res.output, res.n_samples, embedder.sample_rate)
            writer.write(key, row, arr, times)
            n_done += 1
            audio_s += row["duration_s"]
    finally:
        writer.close(failures)
    seconds = time.perf_counter() - t0
    summary = {
        "out": str(out),
        "format": fmt,
        "model_id": settings["model_id"],
        "n_files": len(pairs),
        "n_done": n_done,
        "n_existing": n_existing,
        "n_failed": len(failures),
        "failures": failures,
        "audio_seconds": round(audio_s, 3),
        "seconds": round(seconds, 3),
        "realtime_factor": round(audio_s / seconds, 2) if seconds > 0 and audio_s else None,
    }
    writer.finish(summary)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"embedded {s['n_done']} file(s) ({s['audio_seconds'] / 60:.1f} min of audio) in {s['seconds']:.1f} s"
             + (f", {s['realtime_factor']:.3g}x real time" if s["realtime_factor"] else "")
             + f"; {s['n_existing']} already done; {s['n_failed']} failed -> {s['out']}"]
    for f in s["failures"][:20]:
        lines.append(f"  skipped {f['path']}: {f['error']}")
    if len(s["failures"]) > 20:
        lines.append(f"  ... and {len(s['failures']) - 20} more (see the summary)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


class _NpyWriter:
    """One ``.npy`` per input + ``embed.json`` + append-only ``index.jsonl`` + ``summary.json``."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        from m3bert.io import atomic_write_json, read_json

        if out.exists() and not out.is_dir():
            raise DataError(f"{out}: exists and is not a folder; --format npy writes a folder")
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        header = out / "embed.json"
        if header.is_file():
            _check_settings(read_json(header), settings, header)
        else:
            atomic_write_json(header, settings)
        self.done: dict[str, dict[str, Any]] = {}
        index = out / "index.jsonl"
        if index.is_file():
            for line in index.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash; that file is simply redone
                self.done[row["key"]] = row
        self.index = open(index, "a", encoding="utf-8")

    def path_for(self, key: str) -> Path:
        return self.out / f"{key}.npy"

    def is_done(self, src: Path, key: str) -> bool:
        row = self.done.get(key)
        if row is None or not self.path_for(key).is_file():
            return False
        try:
            stamp = _source_stamp(src)
        except OSError:
            return False
        return all(row.get(k) == v for k, v in stamp.items())

    def write(self, key: str, row: dict[str, Any], arr: np.ndarray, times: np.ndarray | None) -> None:
        from m3bert.io import atomic_save_npy

        path = self.path_for(key)
        atomic_save_npy(path, arr)
        row = {**row, "file": path.relative_to(self.out).as_posix()}
        self.index.write(json.dumps(row) + "\n")
        self.index.flush()
        os.fsync(self.index.fileno())

    def close(self, failures: list[dict[str, str]]) -> None:
        self.index.close()

    def finish(self, summary: dict[str, Any]) -> None:
        from m3bert.io import atomic_write_json

        atomic_write_json(self.out / "summary.json", summary)


class _H5Writer:
    """One HDF5 file, written as ``OUT.partial`` and renamed into place at the end."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        import h5py

        if out.is_dir():
            raise DataError(f"{out}: is a folder; --format h5 writes one file (e.g. {out}.h5)")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.partial = out.with_name(out.name + ".partial")
        if out.is_file() and not self.partial.exists():
            os.replace(out, self.partial)  # reopen a finished file to add new inputs
        try:
            self.h5 = h5py.File(self.partial, "a")
        except OSError:
            # a crash can leave an unreadable partial file: start it again
            self.partial.unlink()
            self.h5 = h5py.File(self.partial, "a")
        existing = self.h5.attrs.get("settings")
        if existing is not None:
            _check_settings(json.loads(existing), settings, out)
        else:
            self.h5.attrs["settings"] = json.dumps(settings)
        self.settings = settings

    def is_done(self, src: Path, key: str) -> bool:
        grp = self.h5.get(key)
        if grp is None or not grp.attrs.get("complete", False):
            return False
        try:
            stamp = _source_stamp(src)
        except OSError:
            return False
        return all(int(grp.attrs.get(k, -1)) == v for k, v in stamp.items())

    def write(self, key: str, row: dict[str, Any], arr: np.ndarray, times: np.ndarray | None) -> None:
        if key in self.h5:
            del self.h5[key]
        grp = self.h5.create_group(key)
        grp.create_dataset("embedding", data=arr)
        if times is not None:
            grp.create_dataset("times_ms", data=times)
        for k, v in row.items():
            grp.attrs[k] = json.dumps(v) if isinstance(v, (list, dict)) or v is None else v
        grp.attrs["complete"] = True
        self.h5.flush()

    def close(self, failures: list[dict[str, str]]) -> None:
        self.h5.attrs["failures"] = json.dumps(failures)
        self.h5.close()

    def finish(self, summary: dict[str, Any]) -> None:
        os.replace(self.partial, self.out)


if __name__ == "__main__":  # pragma: no cover
    from m3bert.cli import main

    sys.exit(main(["embed", *sys.argv[1:]]))
