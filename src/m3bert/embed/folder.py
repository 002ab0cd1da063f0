"""The embeddings folder: the one owner of the format ``m3bert embed`` writes and ``--embeddings`` reads.

Longer than 500 lines because the writers (npy, HDF5), the run that feeds them and the reader of one
format live together: splitting them would split the format's single owner.

``--format npy`` (default), a folder ``OUT``:

* ``OUT/<key>.npy`` per input file, where the key is the input's path relative to the folder
  given (or its name; see :func:`collect_inputs`), extension included, so ``song.wav`` and
  ``song.mp3`` never collide: ``song.wav`` -> ``song.wav.npy`` (:func:`npy_path`);
* ``OUT/embed.json``: the settings and model id the folder was written with
  (:func:`embedding_settings`; a rerun with other settings is refused);
* ``OUT/index.jsonl``: one line per finished file (source path, output file, shape, layers,
  pooling, model id, source size and mtime; at frame level the frame times as
  ``first_frame_ms + i * frame_hop_ms``);
* ``OUT/summary.json``: counts, speed, files that failed and why.

``--format h5``: one HDF5 file ``OUT`` with one group per input key (mirroring the input tree);
each group holds ``embedding`` (and ``times_ms`` at frame level) and the index row as
attributes; the file's attributes hold the settings. A run works on ``OUT.partial`` (a copy of
an existing ``OUT``) and renames it onto ``OUT`` when it ends, so ``OUT`` is never modified in
place: until a complete new file replaces it, it stays as it was, whatever happens to the run
(an exception, a kill, another program holding ``OUT`` open). A failure never deletes ``OUT`` or
a ``.partial`` holding results; an unreadable ``.partial`` left by a crash is set aside as
``OUT.partial.unreadable-<time>`` (never deleted) and the run starts again from ``OUT``.

One writer per output: a run holds an exclusive OS lock (``OUT/.lock``, or ``.OUT.lock`` next to
an HDF5 file; released when the process ends, even if it is killed), so a second ``m3bert embed``
into the same output stops at once with a ``DataError`` instead of interleaving rows.

Keys are relative paths: they never start with ``/`` and never contain ``..``, so no output is
written outside ``OUT`` (:func:`check_key`).

Array shapes: clip level ``(D,)`` for one layer (``(2D,)`` with ``meanstd``), ``(n_layers, D)``
for several; frame level ``(T, D)`` for one layer, ``(n_layers, T, D)`` for several.

Rerunning :func:`embed_files` skips finished files (an index line whose ``.npy`` exists and whose
source file has the same size and modification time; in HDF5 a group marked complete) and
refuses to mix settings or models in one output. :class:`EmbeddingsFolder` reads a folder back
(also folders written by other tools: one ``.npy`` per audio file, named either way).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from m3bert.audio import find_audio_files
from m3bert.core.errors import ConfigError, DataError
from m3bert.core.io import atomic_path, atomic_save_npy, atomic_write_json, exclusive_lock, json_default, read_json
from m3bert.core.version import __version__
from m3bert.embed.embedder import parse_layers

OUTPUT_FORMAT = "m3bert-embeddings"
FORMATS = ("npy", "h5")
SETTINGS_FILE = "embed.json"
INDEX_FILE = "index.jsonl"
SUMMARY_FILE = "summary.json"
# settings an output must share with a rerun that adds to it
SETTINGS_KEYS = ("model_id", "level", "layers", "pool", "dtype", "window_frames", "hop_frames", "feature_set")


# ---------------------------------------------------------------------------------------------
# Naming and settings
# ---------------------------------------------------------------------------------------------


def check_key(key: str) -> str:
    """``key`` if it is a relative path inside the output (no leading ``/``, no empty, ``.`` or ``..``
    part), else a ``DataError``: a key is where the output is written."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DataError(f"output key {key!r} is not a relative path inside the output (expected parts "
                        f"separated by '/', none of them empty, '.' or '..')")
    return key


def npy_path(root: str | os.PathLike, key: str) -> Path:
    """Where the npy folder ``root`` keeps the embedding of ``key``: ``root/<key>.npy``."""
    return Path(root) / f"{check_key(key)}.npy"


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, str]]:
    """``(source file, output key)`` pairs; the key mirrors the input tree.

    One folder: keys are paths relative to it. Several inputs: a folder's keys are prefixed with
    its name (``root`` for the file system's root), a file's key is its name. Keys are relative
    (:func:`check_key`), whatever the inputs look like (absolute, ``..``, trailing ``/``).
    Colliding keys are a ``DataError``.
    """
    if not inputs:
        raise ConfigError("no inputs given; expected audio files and/or folders")
    pairs: list[tuple[Path, str]] = []
    several = len(inputs) > 1
    for raw in inputs:
        root = Path(raw)
        if root.is_dir():
            for f in find_audio_files(root):
                rel = f.relative_to(root).as_posix()
                pairs.append((f, f"{root.resolve().name or 'root'}/{rel}" if several else rel))
        elif root.is_file():
            pairs.append((root, root.name))
        else:
            raise DataError(f"{root}: no such file or folder (expected audio files or folders)")
    seen: dict[str, Path] = {}
    for f, key in pairs:
        check_key(key)
        if key in seen and seen[key].resolve() != f.resolve():
            raise DataError(f"inputs {seen[key]} and {f} would both be written as {key!r}; pass them separately")
        seen[key] = f
    unique = {key: f for f, key in pairs}
    return [(f, key) for key, f in unique.items()]


def embedding_settings(embedder: Any, *, level: str, layers: Any, pool: str) -> dict[str, Any]:
    """The settings record of an output (``embed.json`` / the HDF5 ``settings`` attribute)."""
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


def check_settings(existing: dict[str, Any], new: dict[str, Any], where: Path) -> None:
    """Refuse to add to an output written with other settings (``DataError`` naming each difference)."""
    diffs = [f"{k}: existing {existing.get(k)!r}, now {new.get(k)!r}" for k in SETTINGS_KEYS
             if existing.get(k) != new.get(k)]
    if diffs:
        raise DataError(f"{where} was written with different settings ({'; '.join(diffs)}); "
                        "use another --out or delete it")


def source_stamp(path: Path) -> dict[str, int]:
    """Size and mtime of a source file: a finished output whose source changed is redone."""
    st = path.stat()
    return {"source_size": int(st.st_size), "source_mtime_ns": int(st.st_mtime_ns)}


def index_row(settings: dict[str, Any], src: Path, key: str, output: Any, n_samples: int,
              sample_rate: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """The index row of one embedded file, its array and (frame level) its frame times in ms."""
    if settings["level"] == "frame":
        arr, times = output
    else:
        arr, times = output, None
    row = {"path": str(src), "key": key, "shape": list(arr.shape), "level": settings["level"],
           "layers": settings["layers"], "pool": settings["pool"], "model_id": settings["model_id"],
           "n_samples": int(n_samples), "duration_s": n_samples / sample_rate, **source_stamp(src)}
    if times is not None:
        row.update(n_frames=int(times.shape[0]), first_frame_ms=float(times[0]) if times.size else 0.0,
                   frame_hop_ms=settings["frame_hop_ms"])
    return row, arr, times


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def lock_path(out: Path, fmt: str) -> Path:
    """The lock file of an output: ``OUT/.lock`` (npy folder) or ``.OUT.lock`` beside an HDF5 file."""
    return out / ".lock" if fmt == "npy" else out.parent / f".{out.name}.lock"


class NpyWriter:
    """One ``.npy`` per input + ``embed.json`` + append-only ``index.jsonl`` + ``summary.json``."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        if out.exists() and not out.is_dir():
            raise DataError(f"{out}: exists and is not a folder; --format npy writes a folder")
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        header = out / SETTINGS_FILE
        if header.is_file():
            check_settings(read_json(header), settings, header)
        else:
            atomic_write_json(header, settings)
        self.done: dict[str, dict[str, Any]] = {}
        index = out / INDEX_FILE
        if index.is_file():
            for line in index.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash; that file is simply redone
                self.done[row["key"]] = row
        self.index = open(index, "a", encoding="utf-8")

    def is_done(self, src: Path, key: str) -> bool:
        row = self.done.get(key)
        if row is None or not npy_path(self.out, key).is_file():
            return False
        try:
            stamp = source_stamp(src)
        except OSError:
            return False
        return all(row.get(k) == v for k, v in stamp.items())

    def write(self, key: str, row: dict[str, Any], arr: np.ndarray, times: np.ndarray | None) -> None:
        path = npy_path(self.out, key)
        atomic_save_npy(path, arr)
        row = {**row, "file": path.relative_to(self.out).as_posix()}
        self.index.write(json.dumps(row, default=json_default) + "\n")
        self.index.flush()
        os.fsync(self.index.fileno())

    def close(self, failures: list[dict[str, str]]) -> None:
        self.index.close()

    def finish(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.out / SUMMARY_FILE, summary)


class H5Writer:
    """One HDF5 file: the run writes ``OUT.partial`` (a copy of ``OUT``) and renames it onto ``OUT`` at the end."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        import h5py  # optional dependency (m3bert[h5]): only --format h5 needs it

        if out.is_dir():
            raise DataError(f"{out}: is a folder; --format h5 writes one file (e.g. {out}.h5)")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.partial = out.with_name(out.name + ".partial")
        self.base = _stamp(out)  # the OUT this run adds to (None: none yet)
        self.h5 = self._resume(h5py) if self.partial.exists() else None
        if self.h5 is None:
            if self.base is not None:
                with _open_h5(h5py, out, "r") as existing:  # readable, same settings: before copying it
                    _check_h5_settings(existing, settings, out)
                with atomic_path(self.partial) as tmp:
                    shutil.copyfile(out, tmp)
            self.h5 = _open_h5(h5py, self.partial, "a")
            self.h5.attrs["base_stamp"] = json.dumps(self.base)
        try:
            _check_h5_settings(self.h5, settings, out)
        except BaseException:
            self.h5.close()
            raise
        if self.h5.attrs.get("settings") is None:
            self.h5.attrs["settings"] = json.dumps(settings, default=json_default)

    def _resume(self, h5py: Any) -> Any:
        """The ``.partial`` of an interrupted run, if it is readable and was made from today's ``OUT``."""
        try:
            h5 = _open_h5(h5py, self.partial, "a")
        except DataError:
            if _busy(self.partial, h5py):
                raise
            aside = self.partial.with_name(f"{self.partial.name}.unreadable-{time.time_ns()}")
            os.replace(self.partial, aside)  # kept, never deleted: it may hold results of the crashed run
            warnings.warn(f"{self.partial}: unreadable (left by a crash?); moved to {aside} and starting again "
                          f"from {self.out if self.base is not None else 'nothing'}", stacklevel=3)
            return None
        made_from = h5.attrs.get("base_stamp")  # (partials of older versions have none)
        if made_from is not None and json.loads(made_from) != self.base:
            h5.close()
            raise DataError(f"{self.partial} is left from an interrupted run on another version of {self.out} "
                            "(it changed since); move one of them away and rerun")
        return h5

    def is_done(self, src: Path, key: str) -> bool:
        grp = self.h5.get(key)
        if grp is None or not grp.attrs.get("complete", False):
            return False
        try:
            stamp = source_stamp(src)
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
            grp.attrs[k] = json.dumps(v, default=json_default) if isinstance(v, (list, dict)) or v is None else v
        grp.attrs["complete"] = True
        self.h5.flush()

    def close(self, failures: list[dict[str, str]]) -> None:
        if self.h5 is None:
            return
        try:
            self.h5.attrs["failures"] = json.dumps(failures, default=json_default)
        finally:
            self.h5.close()
            self.h5 = None

    def finish(self, summary: dict[str, Any]) -> None:
        if _stamp(self.out) != self.base:
            raise DataError(f"{self.out} was changed by another program during this run; this run's results "
                            f"are kept in {self.partial} (OUT left as it is now)")
        os.replace(self.partial, self.out)


def _stamp(path: Path) -> list[int] | None:
    """Identity of a file's current contents (size, mtime, inode), or ``None`` if it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns), int(st.st_ino)]


def _open_h5(h5py: Any, path: Path, mode: str) -> Any:
    """``h5py.File(path, mode)``; failures as a ``DataError`` naming the file (open elsewhere, or unreadable)."""
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        if _busy_error(exc):
            raise DataError(f"{path}: open in another program (HDF5 file lock: {_first_line(exc)}); close it "
                            "and rerun") from None
        raise DataError(f"{path}: not a readable HDF5 file ({_first_line(exc)}); it is left untouched: move it "
                        "away or use another --out") from None


def _busy(path: Path, h5py: Any) -> bool:
    try:
        h5py.File(path, "r").close()
    except OSError as exc:
        return _busy_error(exc)
    return False


def _busy_error(exc: OSError) -> bool:
    text = str(exc).lower()
    return isinstance(exc, BlockingIOError) or "lock" in text or "already open" in text


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_h5_settings(h5: Any, settings: dict[str, Any], out: Path) -> None:
    existing = h5.attrs.get("settings")
    if existing is not None:
        check_settings(json.loads(existing), settings, out)


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
    """Embed every audio file under ``inputs`` into ``out`` with ``embedder``; returns the run summary.

    Resumable and atomic (see the module docstring). Bad files are skipped and listed in the
    summary (``strict=True`` raises on the first one instead).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}; expected one of {FORMATS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}; expected an integer >= 1 (encoder windows per forward pass)")
    pairs = collect_inputs(inputs)
    if not pairs:
        raise DataError(f"no audio files found in {[str(i) for i in inputs]}")
    settings = embedding_settings(embedder, level=level, layers=layers, pool=pool)
    out = Path(out)
    if fmt == "npy" and out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; --format npy writes a folder")
    with exclusive_lock(lock_path(out, fmt), what=f"embeddings output {out}"):
        writer = NpyWriter(out, settings) if fmt == "npy" else H5Writer(out, settings)
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
                row, arr, times = index_row(settings, src, key, res.output, res.n_samples, embedder.sample_rate)
                if not np.isfinite(arr).all():  # never written, whatever produced it
                    failures.append({"path": str(src), "error": f"{src}: embedding contains NaN/inf; not written"})
                    continue
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


# ---------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------


class EmbeddingsFolder:
    """An npy embeddings folder read back: its settings and one embedding per key.

    A key is an audio file's path relative to the dataset the folder mirrors (``a/b/song.wav``).
    Folders written by other tools are read too: without ``embed.json`` the settings are empty,
    and a key's file may also be named without the audio extension (``a/b/song.npy``).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        header = self.directory / SETTINGS_FILE
        self.settings: dict[str, Any] = read_json(header) if header.is_file() else {}

    @property
    def level(self) -> str:
        """``"frame"`` or ``"clip"`` (what ``embed.json`` says; folders without it count as clip level)."""
        return self.settings.get("level") or "clip"

    def path_for(self, key: str) -> Path:
        """The file ``m3bert embed`` writes for ``key``."""
        return npy_path(self.directory, key)

    def find(self, key: str) -> Path:
        """The file holding ``key``'s embedding: ``path_for(key)``, or for other tools' folders the
        name without the audio extension (tried first, as ever); ``DataError`` when neither exists."""
        stem, full = self.directory / Path(key).with_suffix(".npy"), self.path_for(key)
        for path in (stem, full):
            if path.is_file():
                return path
        raise DataError(f"no embedding for {key} (looked for {stem.relative_to(self.directory)} and "
                        f"{full.relative_to(self.directory)} under {self.directory})")

    def load(self, key: str) -> np.ndarray:
        """``key``'s embedding as stored, as float32 (``DataError`` naming the file when missing or unreadable)."""
        path = self.find(key)
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable .npy file ({exc})") from None
        return np.asarray(arr, dtype=np.float32)

    def layer_vectors(self, key: str) -> np.ndarray:
        """``key``'s embedding as ``(n_layers, D)`` vectors, frames averaged over time.

        ``(D,)`` is one vector; ``(n_layers, D)`` one per layer, or ``(T, D)`` frames of one layer
        when the folder is frame level; ``(n_layers, T, D)`` frames per layer.
        """
        arr = self.load(key)
        if arr.ndim == 1:
            out = arr[None]
        elif arr.ndim == 2:
            out = arr.mean(0, keepdims=True) if self.level == "frame" else arr
        elif arr.ndim == 3:
            out = arr.mean(1)
        else:
            raise DataError(f"{self.find(key)}: embedding shape {arr.shape}, expected (D,), (n_layers, D) or (n_layers, T, D)")
        if not np.all(np.isfinite(out)):
            raise DataError(f"{self.find(key)}: embedding contains NaN/inf")
        return out
