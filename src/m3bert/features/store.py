"""The feature store: chunked frames of many audio files, sharded, memory-mapped, resumable.

Longer than 500 lines because the writer and the reader of one on-disk format live together:
splitting them would split the format's single owner.

Layout of a store directory::

    STORE/store.json                  identity: feature set (name + config), its hash, chunking rule,
                                      partition (shard_index / num_shards), dtype, channels
    STORE/shards/<id>.npy             (n_frames_total, n_channels) float32 (or float16, see below):
                                      the chunks of several files, one after the other
    STORE/shards/<id>.stats.npy       (n_files, 2, n_channels) float64 per-file sum / sum of squares
    STORE/shards/<id>.json            the commit record: per file its source, sha1 and chunks
                                      (start_s, end_s, n_frames, offset into the shard), and a
                                      "warning" when it decoded much shorter than its header said
    STORE/rejects.json                files that could not be used, with the reason
    STORE/manifest.json               one row per chunk + rejects + warnings + corpus CMVN
                                      statistics (a derived, human/tool-readable view; rewritten per run)

Why this format. Plain ``.npy`` shards are read with ``np.load(mmap_mode="r")`` by numpy alone:
any chunk is a zero-copy slice of a memory map, found through the row's ``offset``, without
reading anything else; DataLoader worker processes can share them after fork, which HDF5 handles
cannot, and there is no extra dependency (h5py/zarr). Commit is per shard: the ``.npy`` is
streamed to a temporary name (constant memory, whatever the shard size), fsynced and renamed,
and only then the ``.json`` record is written (atomically). A shard without its record does not
exist for readers, so a run killed at any moment leaves nothing a later run trusts; at worst it
loses the files of the one shard it was filling (``files_per_shard``, default 32). Grouping files
into shards keeps the file count low (one small file per song would be 100k+ inodes).

The store holds *raw* frames (before CMVN); :meth:`FeatureStore.get` applies the feature set's
CMVN (per clip, or corpus statistics merged exactly from the per-file sums). So a ``cmvn="corpus"``
store's statistics are computed once, while extracting, saved with the store, and merge across
shards and stores. float32 by default: MFCC c0 reaches ~1e3, where float16 steps are ~0.5, far
outside the 1e-4 parity the features are tested to. ``dtype="float16"`` (``m3bert features
--dtype float16``, issue 18) halves the bytes a GPU pre-training run reads (relative rounding
<= 2^-11 = 4.9e-4 per value, exactly ``np.float16(frames)``); readers always return float32, and
the per-file statistics are those of the stored (rounded) values, so per-clip and corpus CMVN
describe what is read. A store is one dtype (``store.json``); mixing is refused like any other
setting.

Memory and workers. A worker streams its file chunk by chunk (``audio.AudioChunks``: about two
30 s chunks of audio at a time) and appends each chunk's frames to a spool file
(``shards/.spool-*``); the writer copies the spool into the shard in blocks, so neither process
holds a whole file, whatever its length. Workers (``--workers N``) run in ``pool.run_tasks``: a
worker that dies on a file (a decoder's segfault, the OOM killer) makes that file a reject
("worker process died (signal 11, SIGSEGV) ...") and is replaced; the run goes on.

Resume and identity: a file is identified by the SHA-1 of its bytes; a rerun skips every file
whose hash is committed and extracts the rest, so rerunning is idempotent. A file whose bytes
changed is extracted again and its newer record supersedes the old one. A store refuses to mix
feature configs, chunking rules or partitions (``DataError``). ``--shard-index i --num-shards n``
keeps the files whose source path hashes to ``i`` modulo ``n`` (stable when files are added);
``FeatureStore.open([store0, store1, ...])`` reads the partial stores as one, in the same order as
one unsharded store.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from m3bert.audio import AUDIO_EXTENSIONS, AudioChunks, find_audio_files
from m3bert.core.errors import AudioError, ConfigError, DataError, M3bertError
from m3bert.core.io import atomic_path, atomic_write_json, exclusive_lock, file_sha1, read_json, versions
from m3bert.core.progress import progress as progress_bar
from m3bert.features.fast import single_thread
from m3bert.features.normalize import CmvnAccumulator
from m3bert.features.pool import run_tasks
from m3bert.features.spec import feature_set_from_dict

FORMAT = "m3bert-feature-store"
FORMAT_VERSION = 1
_DTYPE = np.dtype("<f4")  # the default, and what readers return
#: Store dtypes by name (``--dtype``): what shards hold on disk.
STORE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


# ---------------------------------------------------------------------------------------------
# Inputs and partitioning
# ---------------------------------------------------------------------------------------------

def resolve_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[tuple[str, Path]]:
    """``[(source, path)]`` sorted by source. A folder contributes its audio files (recursive) with
    ``source`` = path relative to the folder; a file given directly keeps its path as given."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out: dict[str, Path] = {}
    for item in items:
        p = Path(item)
        if p.is_dir():
            for f in find_audio_files(p):
                out.setdefault(f.relative_to(p).as_posix(), f)
        elif p.is_file():
            out.setdefault(p.as_posix(), p)
        else:
            raise DataError(f"input {p} does not exist (expected an audio file or a folder of audio files)")
    return sorted(out.items())


def partition_of(source: str, num_shards: int) -> int:
    """Deterministic partition of a source path: stable across machines and when files are added.

    The path's UTF-8 bytes; a name that is not valid UTF-8 (``os.fsdecode`` keeps its raw bytes as
    surrogate escapes) hashes its raw bytes."""
    return int(hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()[:12], 16) % num_shards


# ---------------------------------------------------------------------------------------------
# Streaming .npy shard writer
# ---------------------------------------------------------------------------------------------

class ShardWriter:
    """Appends ``(n, n_channels)`` float32 blocks to a temporary ``.npy``; ``commit`` renames it.

    The npy header is written with the final shape when committing; numpy pads it to a fixed
    128 bytes for any row count below 10^15, so it can be rewritten in place.
    """

    HEADER_BYTES = 128

    def __init__(self, directory: Path, shard_id: str, n_channels: int, dtype: np.dtype = _DTYPE) -> None:
        self.directory, self.shard_id, self.n_channels = directory, shard_id, n_channels
        self.dtype = np.dtype(dtype)
        if (directory / f"{shard_id}.json").exists():  # pragma: no cover - ids are unique per run
            raise DataError(f"{directory}: shard {shard_id} already exists; refusing to overwrite it")
        self.tmp = directory / f".{shard_id}.npy.tmp"
        self.fh = open(self.tmp, "wb")
        self._write_header(0)
        self.n_frames = 0
        self.files: list[dict[str, Any]] = []
        self.stats: list[np.ndarray] = []

    def _write_header(self, n_rows: int) -> None:
        self.fh.seek(0)
        np.lib.format.write_array_header_1_0(
            self.fh, {"descr": self.dtype.str, "fortran_order": False, "shape": (int(n_rows), self.n_channels)})
        if self.fh.tell() != self.HEADER_BYTES:  # pragma: no cover - numpy format change
            raise DataError(f"unexpected npy header size {self.fh.tell()}")

    def append_file(self, entry: dict[str, Any], spool: Path, stats: np.ndarray) -> None:
        """One source file: the frames of its chunks, one after the other in the raw float32 file
        ``spool`` (written by the worker), go in contiguously, copied in blocks (constant memory);
        ``entry`` gets their offsets; ``stats`` is its ``(2, n_channels)`` sum / sum of squares."""
        n_expected = sum(int(c["n_frames"]) for c in entry["chunks"])
        n_bytes = n_expected * self.n_channels * self.dtype.itemsize
        if spool.stat().st_size != n_bytes:
            raise DataError(f"{spool}: worker output has {spool.stat().st_size} bytes, expected {n_bytes} "
                            f"({n_expected} frames of {entry['source']})")
        start = self.fh.tell()
        try:
            with open(spool, "rb") as src:
                shutil.copyfileobj(src, self.fh, 16 << 20)
        except BaseException:  # a disk error or Ctrl-C mid-copy: the shard keeps whole files only
            self.fh.seek(start)
            self.fh.truncate()
            raise
        for meta in entry["chunks"]:
            meta["offset"] = self.n_frames
            self.n_frames += int(meta["n_frames"])
        self.files.append(entry)
        self.stats.append(np.asarray(stats, dtype=np.float64))

    def commit(self) -> dict[str, Any]:
        self._write_header(self.n_frames)
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.directory / f"{self.shard_id}.npy")
        stats = np.stack(self.stats) if self.stats else np.zeros((0, 2, self.n_channels))
        with _atomic_npy(self.directory / f"{self.shard_id}.stats.npy") as tmp:
            np.save(tmp, stats.astype(np.float64))
        record = {"shard": self.shard_id, "n_frames": self.n_frames, "committed_at": time.time(), "files": self.files}
        atomic_write_json(self.directory / f"{self.shard_id}.json", record, indent=None)  # the commit point
        return record

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


@contextlib.contextmanager
def _atomic_npy(path: Path) -> Iterator[Path]:

    with atomic_path(path, suffix=".npy") as tmp:
        yield tmp


# ---------------------------------------------------------------------------------------------
# Per-file work (runs in worker processes)
# ---------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(fs_dict: dict[str, Any], max_seconds: float, done: frozenset[str], n_threads: int | None,
                 dtype: str = "<f4") -> None:
    if n_threads is not None:

        torch.set_num_threads(n_threads)
    _WORKER.update(feature_set=feature_set_from_dict(fs_dict), max_seconds=max_seconds, done=done,
                   dtype=np.dtype(dtype))


def _process_file(task: tuple[str, str, str]) -> dict[str, Any]:
    """Hash, decode, chunk and extract one file into its spool file; never raises for a bad file
    (whatever the exception, it returns a reject naming the file)."""
    source, path, spool = task
    t0 = time.perf_counter()
    try:
        sha1 = file_sha1(path)
    except Exception as exc:
        return _reject(task, f"unreadable ({type(exc).__name__}: {exc})")
    if sha1 in _WORKER["done"]:
        return {"status": "skip", "source": source, "sha1": sha1}
    try:
        res = _extract_file(path, Path(spool))
    except Exception as exc:  # a decoder/library failure on one file must not end a long batch job
        with contextlib.suppress(OSError):
            os.unlink(spool)
        return _reject(task, str(exc) if isinstance(exc, M3bertError) else f"{type(exc).__name__}: {exc}", sha1=sha1)
    res.update(status="done", source=source, sha1=sha1, spool=spool, decode_s=res["decode_s"] + res.pop("t0") - t0)
    return res


def _reject(task: tuple[str, str, str], reason: str, *, sha1: str | None = None) -> dict[str, Any]:
    source, path, _ = task
    return {"status": "reject", "source": source, "path": path, "sha1": sha1,
            "reason": reason if path in reason else f"{path}: {reason}"}


def _worker_died(task: tuple[str, str, str], why: str) -> dict[str, Any]:
    """The result of a file whose worker process died (or raised) while working on it."""
    with contextlib.suppress(OSError):
        os.unlink(task[2])
    return _reject(task, f"{why} while decoding or extracting this file")


def _extract_file(path: str, spool: Path) -> dict[str, Any]:
    """Stream ``path`` chunk by chunk (``audio.AudioChunks``: memory bounded by about two chunks,
    not the file) through the feature set, appending each chunk's raw frames to ``spool``."""
    feature_set, max_seconds = _WORKER["feature_set"], _WORKER["max_seconds"]
    sr = feature_set.sample_rate
    acc = CmvnAccumulator(feature_set.n_channels)
    reader = AudioChunks(path, sample_rate=sr, max_seconds=max_seconds, min_samples=feature_set.min_samples)
    chunks: list[dict[str, Any]] = []
    t0 = t = time.perf_counter()
    decode_s = features_s = 0.0
    with open(spool, "wb") as fh:
        for a, b, y in reader:
            t1 = time.perf_counter()
            decode_s += t1 - t
            (frames,) = feature_set.extract_batch([y], sample_rate=sr, normalize=False)
            stored = np.ascontiguousarray(frames, dtype=_WORKER.get("dtype", _DTYPE))
            fh.write(stored.tobytes())
            acc.update(stored.astype(_DTYPE, copy=False))  # statistics of what is read back
            chunks.append({"start_s": a / sr, "end_s": b / sr, "n_frames": int(frames.shape[0])})
            t = time.perf_counter()
            features_s += t - t1
    return {"duration_s": reader.n_samples / sr, "chunks": chunks, "stats": np.stack([acc.total, acc.total_sq]),
            "warning": reader.warning, "t0": t0, "decode_s": decode_s, "features_s": features_s}


# ---------------------------------------------------------------------------------------------
# Writing a store
# ---------------------------------------------------------------------------------------------

def _store_header(feature_set: Any, *, max_seconds: float, shard_index: int, num_shards: int,
                  dtype: str = "float32") -> dict[str, Any]:
    d = feature_set.to_dict()
    d["cmvn_stats"] = None  # statistics are derived from the data, not part of the identity
    return {"format": FORMAT, "version": FORMAT_VERSION, "feature_set": d,
            "config_hash": feature_set.config_hash(with_stats=False), "n_channels": feature_set.n_channels,
            "dtype": STORE_DTYPES[dtype].str, "chunking": {"rule": "greer2023", "max_seconds": float(max_seconds)},
            "shard_index": int(shard_index), "num_shards": int(num_shards)}


def _check_header(path: Path, have: dict[str, Any], want: dict[str, Any]) -> None:
    if have.get("format") != FORMAT:
        raise DataError(f"{path}: not an m3bert feature store (store.json format={have.get('format')!r})")
    if have.get("config_hash") != want["config_hash"] or have["feature_set"]["name"] != want["feature_set"]["name"]:
        diff = {k: (have["feature_set"]["config"].get(k), v) for k, v in want["feature_set"]["config"].items()
                if have["feature_set"]["config"].get(k) != v}
        raise DataError(f"{path}: store holds feature set {have['feature_set']['name']!r} config "
                        f"{have['config_hash']}, refusing to add {want['feature_set']['name']!r} config "
                        f"{want['config_hash']} (differences (store, new): {diff}); use a new --out folder")
    if have.get("chunking") != want["chunking"]:
        raise DataError(f"{path}: store was chunked with {have.get('chunking')}, got {want['chunking']}")
    if have.get("dtype", _DTYPE.str) != want["dtype"]:
        raise DataError(f"{path}: store holds {np.dtype(have.get('dtype', _DTYPE.str)).name} frames, refusing to add "
                        f"{np.dtype(want['dtype']).name} ones (--dtype); use a new --out folder")
    if (have.get("shard_index"), have.get("num_shards")) != (want["shard_index"], want["num_shards"]):
        raise DataError(f"{path}: store was filled as partition {have.get('shard_index')}/{have.get('num_shards')}, "
                        f"got --shard-index {want['shard_index']} --num-shards {want['num_shards']}")


def check_run_settings(*, feature_set: Any, workers: int, shard_index: int, num_shards: int, max_seconds: float,
                       files_per_shard: int, dtype: str = "float32") -> None:
    """Refuse settings that are invalid or would break every file, before anything is written.

    ``--max-seconds`` must be finite and long enough that the shortest example of the 30 s rule
    (half of it) still holds one analysis window; otherwise every long file would be rejected
    and the store would keep the broken setting.
    """
    def whole(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not (whole(num_shards) and whole(shard_index)) or num_shards < 1 or not 0 <= shard_index < num_shards:
        raise DataError(f"--shard-index must be in [0, {num_shards}) with --num-shards >= 1, "
                        f"got {shard_index!r}/{num_shards!r}")
    if not whole(workers) or workers < 1:
        raise DataError(f"--workers must be an integer >= 1, got {workers!r}")
    if dtype not in STORE_DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: expected one of {list(STORE_DTYPES)}")
    if not whole(files_per_shard) or files_per_shard < 1:
        raise DataError(f"--files-per-shard must be an integer >= 1, got {files_per_shard!r}")
    sr, min_samples = feature_set.sample_rate, feature_set.min_samples
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float, np.number)) \
            or not math.isfinite(max_seconds) or max_seconds <= 0:
        raise ConfigError(f"--max-seconds must be a finite number of seconds > 0, got {max_seconds!r}")
    shortest = (int(math.floor(max_seconds * sr + 1e-9)) + 1) // 2
    if shortest < min_samples:
        raise ConfigError(f"--max-seconds {max_seconds:g} cuts long files into examples as short as "
                          f"{shortest / sr:.3f} s, less than one analysis window ({min_samples} samples = "
                          f"{min_samples / sr:.3f} s at {sr} Hz); use at least {2 * min_samples / sr:.3f}")


def extract_to_store(inputs: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike, *,
                     feature_set: Any, workers: int = 1, shard_index: int = 0, num_shards: int = 1,
                     strict: bool = False, progress: bool = True, max_seconds: float = 30.0,
                     files_per_shard: int = 32, dtype: str = "float32") -> dict[str, Any]:
    """Extract every chunk of every input file into the store at ``out``; returns a summary dict.

    ``inputs``: a folder (recursive), a file, or a list of them; finding no audio file at all is a
    ``DataError``. Files already in the store (same bytes) are skipped; bad files are skipped and
    recorded in ``rejects``, whatever the failure, also a worker process that dies on a file
    (``strict=True``: the first bad file raises its ``AudioError`` after committing the work done
    so far). Files are streamed chunk by chunk, so memory does not grow with a file's length.
    ``workers`` > 1 decodes and extracts in that many processes (one torch thread each).
    Settings are checked (:func:`check_run_settings`) before anything is written. ``dtype``:
    ``"float32"`` or ``"float16"`` shards (module docstring).
    """
    check_run_settings(feature_set=feature_set, workers=workers, shard_index=shard_index, num_shards=num_shards,
                       max_seconds=max_seconds, files_per_shard=files_per_shard, dtype=dtype)
    t_start = time.perf_counter()
    store = Path(out)
    if store.exists() and not store.is_dir():
        raise DataError(f"--out {store}: is a file; expected a feature store folder (new or existing)")
    all_inputs = resolve_inputs(inputs)
    if not all_inputs:
        shown = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
        raise DataError(f"no audio files found in {shown} (looked for {' '.join(AUDIO_EXTENSIONS)}, "
                        f"recursively, case-insensitive)")
    mine = [(s, p) for s, p in all_inputs if partition_of(s, num_shards) == shard_index]
    header = _store_header(feature_set, max_seconds=max_seconds, shard_index=shard_index, num_shards=num_shards,
                           dtype=dtype)
    shard_dir = store / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)

    with exclusive_lock(store / ".lock", what=f"feature store {store}"):
        _remove_debris(shard_dir)
        records = _load_records(shard_dir)
        old_rejects = _read_rejects(store)
        if (store / "store.json").exists():
            have = read_json(store / "store.json")
            if records or have.get("format") != FORMAT:
                _check_header(store, have, header)
            elif _header_identity(have) != _header_identity(header):
                # no file was ever committed here (e.g. an earlier run whose settings broke every
                # file): nothing depends on the old settings, so the store takes the new ones
                atomic_write_json(store / "store.json", {**header, "created_at": time.time(), "versions": versions()})
                old_rejects = {}
        else:
            atomic_write_json(store / "store.json", {**header, "created_at": time.time(), "versions": versions()})
        done_sha = {f["sha1"]: f["source"] for r in records for f in r["files"]}
        summary = _Summary(n_inputs=len(mine), n_all_inputs=len(all_inputs))
        # unique per run, also for two runs in one process within a second (a shard is never overwritten)
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:10]}"
        writer: ShardWriter | None = None
        seq = 0
        rejects: dict[str, dict[str, Any]] = {}
        # each file's frames go through a spool file in the shard folder (a dot name: debris if killed)
        tasks = [(s, str(p), str(shard_dir / f".spool-{run_id}-{i:06d}.f32")) for i, (s, p) in enumerate(mine)]
        init_args = (feature_set.to_dict(), max_seconds, frozenset(done_sha), 1 if workers > 1 else None, header["dtype"])
        bar = _progress(len(mine), progress)
        results = run_tasks(_process_file, tasks, workers=workers, on_failure=_worker_died,
                            initializer=_init_worker, initargs=init_args)
        try:
            for res in results:
                try:
                    bar.update(1)
                    src = res["source"]
                    if res["status"] == "reject":
                        rejects[src] = {"source": src, "reason": res["reason"], "sha1": res.get("sha1")}
                        summary.rejected.append(rejects[src])
                        if strict:
                            raise AudioError(res["reason"] if src in res["reason"] else f"{src}: {res['reason']}")
                        continue
                    if res["status"] == "skip" or res["sha1"] in done_sha:
                        first = done_sha[res["sha1"]]
                        if first == src:
                            summary.n_already += 1
                        else:  # same bytes under another name: one copy only, or splits by song leak
                            summary.duplicates.append({"source": src, "same_as": first})
                        continue
                    done_sha[res["sha1"]] = src
                    if writer is None:
                        writer = ShardWriter(shard_dir, f"{run_id}-{seq:05d}", feature_set.n_channels,
                                             np.dtype(header["dtype"]))
                        seq += 1
                    entry = {"source": src, "sha1": res["sha1"], "duration_s": res["duration_s"],
                             "chunks": res["chunks"]}
                    if res.get("warning"):
                        entry["warning"] = res["warning"]
                        summary.warnings.append({"source": src, "warning": res["warning"]})
                    t0 = time.perf_counter()
                    writer.append_file(entry, Path(res["spool"]), res["stats"])
                    summary.add(res, time.perf_counter() - t0)
                    bar.set_postfix_str(f"{summary.audio_s / max(time.perf_counter() - t_start, 1e-9):.0f}x rt")
                    if len(writer.files) >= files_per_shard:
                        t0 = time.perf_counter()
                        writer.commit()
                        summary.write_s += time.perf_counter() - t0
                        writer = None
                finally:
                    if res.get("spool"):
                        with contextlib.suppress(OSError):
                            os.unlink(res["spool"])
        finally:
            results.close()  # stops the worker processes now, also when --strict or Ctrl-C ends the loop
            bar.close()
            if writer is not None:
                if writer.files:  # complete files only: keep them (Ctrl-C, --strict) instead of losing them
                    writer.commit()
                else:
                    writer.abort()
            done_sources = {f["source"] for r in _load_records(shard_dir) for f in r["files"]}
            kept = {s: r for s, r in old_rejects.items() if s not in done_sources and s not in rejects}
            kept.update(rejects)
            atomic_write_json(store / "rejects.json", sorted(kept.values(), key=lambda r: r["source"]))
            for p in shard_dir.glob(f".spool-{run_id}-*"):  # files in flight when a run was interrupted
                with contextlib.suppress(OSError):
                    p.unlink()

    opened = FeatureStore.open(store)
    opened.write_manifest()
    summary.wall_s = time.perf_counter() - t_start
    return summary.to_dict(store=opened, path=store, shard_index=shard_index, num_shards=num_shards)


def _header_identity(h: dict[str, Any]) -> tuple:
    return (h.get("config_hash"), h.get("chunking"), h.get("shard_index"), h.get("num_shards"), h.get("dtype", _DTYPE.str))


def _progress(total: int, enabled: bool):

    return progress_bar(total=total, unit="file", desc="features", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _remove_debris(shard_dir: Path) -> None:
    """Delete temp files and shard data without a commit record (left by a killed run)."""
    committed = {p.name[: -len(".json")] for p in shard_dir.glob("*.json")}
    for p in shard_dir.iterdir():
        if p.name.startswith("."):
            p.unlink()
        elif p.suffix == ".npy":
            sid = p.name[: -len(".stats.npy")] if p.name.endswith(".stats.npy") else p.stem
            if sid not in committed:
                p.unlink()


def _load_records(shard_dir: Path) -> list[dict[str, Any]]:
    records = []
    for p in sorted(shard_dir.glob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            records.append(read_json(p))
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: unreadable shard record ({exc}); delete it and its .npy files to re-extract "
                            f"those files") from exc
    return records


def _read_rejects(store: Path) -> dict[str, dict[str, Any]]:
    p = store / "rejects.json"
    if not p.exists():
        return {}
    return {r["source"]: r for r in read_json(p)}


@dataclass
class _Summary:
    n_inputs: int
    n_all_inputs: int
    n_done: int = 0
    n_already: int = 0
    n_chunks: int = 0
    n_frames: int = 0
    audio_s: float = 0.0
    decode_s: float = 0.0
    features_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # stored, but suspicious (truncated)

    def add(self, res: dict[str, Any], write_s: float) -> None:
        self.n_done += 1
        self.n_chunks += len(res["chunks"])
        self.n_frames += sum(c["n_frames"] for c in res["chunks"])
        self.audio_s += res["duration_s"]
        self.decode_s += res["decode_s"]
        self.features_s += res["features_s"]
        self.write_s += write_s

    def to_dict(self, *, store: "FeatureStore", path: Path, shard_index: int, num_shards: int) -> dict[str, Any]:
        return {
            "store": str(path), "partition": f"{shard_index}/{num_shards}",
            "files_found": self.n_all_inputs, "files_in_partition": self.n_inputs,
            "files_done": self.n_done, "files_already_in_store": self.n_already,
            "files_skipped": len(self.rejected) + len(self.duplicates),
            "rejects": self.rejected, "duplicates": self.duplicates, "warnings": self.warnings,
            "chunks": self.n_chunks, "frames": self.n_frames,
            "audio_hours": self.audio_s / 3600.0, "wall_s": self.wall_s,
            "speed_x_realtime": self.audio_s / self.wall_s if self.wall_s > 0 else 0.0,
            "time_s": {"decode": self.decode_s, "features": self.features_s, "write": self.write_s},
            "store_files": len(store.groups()), "store_chunks": len(store),
            "store_hours": float(sum(r["end_s"] - r["start_s"] for r in store.rows) / 3600.0),
        }


# ---------------------------------------------------------------------------------------------
# Reading a store
# ---------------------------------------------------------------------------------------------

class FeatureStore:
    """One or several stores read as one: rows sorted by (source, start), random access by memory map.

    ``rows[i]``: ``chunk_id`` (``"<source>#<k>"``), ``source``, ``sha1``, ``start_s``, ``end_s``,
    ``n_frames``, ``shard`` (index into ``shard_paths``), ``offset`` (first frame in that shard).
    """

    def __init__(self, paths: list[Path], header: dict[str, Any], rows: list[dict[str, Any]],
                 shard_paths: list[Path], rejects: list[dict[str, Any]], cmvn: CmvnAccumulator,
                 duplicates: list[dict[str, Any]]) -> None:
        self.paths = paths
        self.header = header
        self.rows = rows
        self.shard_paths = shard_paths
        self.rejects = rejects
        self.duplicates = duplicates
        self.warnings: list[dict[str, Any]] = []  # files stored with a warning (probably truncated)
        self.cmvn_accumulator = cmvn
        self.lengths = np.asarray([r["n_frames"] for r in rows], dtype=np.int64)
        self.feature_set = feature_set_from_dict(header["feature_set"])
        if self.feature_set.config.cmvn == "corpus" and cmvn.count > 0:
            self.feature_set.set_cmvn_stats(*cmvn.mean_std())
        self._maps: dict[int, np.ndarray] = {}
        self.dtype = np.dtype(header.get("dtype", _DTYPE.str))  # on disk; get() returns float32

    @classmethod
    def open(cls, path_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> "FeatureStore":
        paths = [Path(path_or_paths)] if isinstance(path_or_paths, (str, os.PathLike)) else [Path(p) for p in path_or_paths]
        if not paths:
            raise DataError("FeatureStore.open: no store paths given")
        header = None
        entries: dict[str, tuple[float, dict[str, Any], int]] = {}  # source -> (committed_at, file entry, shard)
        shard_paths: list[Path] = []
        shard_stats: list[Path] = []
        rejects: list[dict[str, Any]] = []
        for path in paths:
            if not (path / "store.json").is_file():
                raise DataError(f"{path}: not a feature store (no store.json); create one with `m3bert features`")
            h = read_json(path / "store.json")
            if header is None:
                if h.get("format") != FORMAT:
                    raise DataError(f"{path}: not an m3bert feature store (format={h.get('format')!r})")
                header = h
            elif (h.get("config_hash") != header["config_hash"] or h.get("chunking") != header.get("chunking")
                  or h.get("dtype", _DTYPE.str) != header.get("dtype", _DTYPE.str)):
                raise DataError(f"cannot open stores with different feature configs as one: {paths[0]} has "
                                f"{header['feature_set']['name']} {header['config_hash']} {header.get('chunking')} "
                                f"{header.get('dtype', _DTYPE.str)}, {path} has {h['feature_set']['name']} "
                                f"{h.get('config_hash')} {h.get('chunking')} {h.get('dtype', _DTYPE.str)}")
            rejects += [{**r, "store": str(path)} for r in _read_rejects(path).values()]
            for rec in sorted(_load_records(path / "shards"), key=lambda r: r["committed_at"]):
                k = len(shard_paths)
                shard_paths.append(path / "shards" / f"{rec['shard']}.npy")
                shard_stats.append(path / "shards" / f"{rec['shard']}.stats.npy")
                for j, f in enumerate(rec["files"]):
                    prev = entries.get(f["source"])
                    # a later commit of the same source (its bytes changed, it was re-extracted) wins
                    if prev is None or rec["committed_at"] >= prev[0]:
                        entries[f["source"]] = (rec["committed_at"], {**f, "_stat_row": j}, k)
        rows: list[dict[str, Any]] = []
        acc = CmvnAccumulator(int(header["n_channels"]))
        stats_cache: dict[int, np.ndarray] = {}
        first_of: dict[str, str] = {}
        duplicates: list[dict[str, Any]] = []
        warnings: list[dict[str, Any]] = []
        for source in sorted(entries):
            _, f, k = entries[source]
            if f["sha1"] in first_of:  # same bytes in two partitions: keep the first, as one store would
                duplicates.append({"source": source, "same_as": first_of[f["sha1"]]})
                continue
            first_of[f["sha1"]] = source
            if f.get("warning"):
                warnings.append({"source": source, "warning": f["warning"]})
            if k not in stats_cache:
                try:
                    stats_cache[k] = np.load(shard_stats[k])
                except (OSError, ValueError) as exc:
                    raise DataError(f"{shard_stats[k]}: missing or unreadable shard statistics ({exc}); the store "
                                    f"is damaged: delete that shard's files and rerun `m3bert features`") from exc
            st = stats_cache[k][f["_stat_row"]]
            acc = acc.merge(CmvnAccumulator(acc.n_channels, sum(c["n_frames"] for c in f["chunks"]), st[0], st[1]))
            for i, c in enumerate(f["chunks"]):
                rows.append({"chunk_id": f"{source}#{i}", "source": source, "sha1": f["sha1"],
                             "start_s": c["start_s"], "end_s": c["end_s"], "n_frames": int(c["n_frames"]),
                             "shard": k, "offset": int(c["offset"])})
        done = {r["source"] for r in rows}
        rejects = [r for r in rejects if r["source"] not in done]
        store = cls(paths, header, rows, shard_paths, rejects, acc, duplicates)
        store.warnings = warnings
        return store

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        # memory maps are reopened lazily in the receiving process (DataLoader workers), never pickled
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def _map(self, k: int) -> np.ndarray:
        m = self._maps.get(k)
        if m is None:
            try:
                m = np.load(self.shard_paths[k], mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DataError(f"{self.shard_paths[k]}: cannot memory-map shard ({exc})") from exc
            if m.ndim != 2 or m.shape[1] != self.feature_set.n_channels or m.dtype != self.dtype:
                raise DataError(f"{self.shard_paths[k]}: shard has shape {m.shape} {m.dtype}, expected "
                                f"(n, {self.feature_set.n_channels}) {self.dtype}")
            self._maps[k] = m
        return m

    def get(self, i: int, *, normalize: bool = True) -> np.ndarray:
        """Frames of chunk ``i``: ``(n_frames, n_channels)`` float32 (whatever the store's dtype), CMVN
        applied unless ``normalize=False``."""
        if not -len(self.rows) <= i < len(self.rows):
            raise IndexError(f"chunk index {i} out of range for a store of {len(self.rows)} chunks")
        r = self.rows[i]
        m = self._map(r["shard"])
        if r["offset"] + r["n_frames"] > m.shape[0]:
            raise DataError(f"{self.shard_paths[r['shard']]}: chunk {r['chunk_id']} ends at frame "
                            f"{r['offset'] + r['n_frames']} beyond the shard's {m.shape[0]} frames (corrupt store)")
        rows = m[r["offset"]: r["offset"] + r["n_frames"]]
        if m.dtype == _DTYPE:
            raw = np.array(rows, dtype=np.float32)
        else:  # float16 -> float32 (exact) by torch's vectorised conversion, ~20x numpy's astype; one
            with single_thread():  # thread: waking a thread pool per chunk costs more than it saves
                raw = torch.from_numpy(np.array(rows)).float().numpy()
        return self.feature_set.normalize(raw) if normalize else raw

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def groups(self) -> dict[str, list[int]]:
        """Chunk indices per source file (for splits by song), in source order."""
        out: dict[str, list[int]] = {}
        for i, r in enumerate(self.rows):
            out.setdefault(r["source"], []).append(i)
        return out

    @property
    def cmvn_stats(self) -> dict[str, list[float]] | None:
        """Corpus per-channel mean/std of the raw frames (whatever the configured CMVN mode)."""
        if self.cmvn_accumulator.count == 0:
            return None
        mean, std = self.cmvn_accumulator.mean_std()
        return {"mean": mean.tolist(), "std": std.tolist()}

    def write_manifest(self) -> None:
        """Write ``manifest.json`` (one row per chunk, rejects, statistics) into the first store."""
        path = self.paths[0]
        atomic_write_json(path / "manifest.json", {
            "format": FORMAT, "version": FORMAT_VERSION, "feature_set": self.feature_set.to_dict(),
            "config_hash": self.header["config_hash"], "chunking": self.header.get("chunking"),
            "dtype": self.dtype.name,
            "partition": f"{self.header.get('shard_index')}/{self.header.get('num_shards')}",
            "n_files": len(self.groups()), "n_chunks": len(self), "n_frames": int(self.lengths.sum()),
            "shards": [p.name for p in self.shard_paths], "corpus_cmvn": self.cmvn_stats,
            "rows": [{**r, "shard": self.shard_paths[r["shard"]].name, "feature_set": self.feature_set.name,
                      "config_hash": self.header["config_hash"]} for r in self.rows],
            "rejects": self.rejects, "warnings": self.warnings,
        }, indent=None)
