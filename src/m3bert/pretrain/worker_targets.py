"""Wu et al. (2021) worker targets: hand-crafted features of every frame of a ``wave16k`` store, beside it.

    summary = build_worker_targets("STORE", "TARGETS", workers="L,P,M,C,T", seed=0)
    targets = WorkerTargets.open("TARGETS", store=store)    # targets.get(i) -> {"lps": (n_i, 1025), ...}

Section 3.2 of the paper: the workers regress log power spectrum (L), prosody (P: zero-crossing
rate, energy, voiced probability, F0), MFCC (M), chroma (C) and tempogram (T), computed with
librosa at 16 kHz, ``n_fft`` 2048, hop 160 (10 ms = one encoder frame), librosa's defaults
otherwise (:func:`m3bert.features.wu.worker_features`). They are computed once, from each stored
chunk's own samples (a ``wave16k`` store holds the waveform as rows of 160 samples; the chunk's
``start_s``/``end_s`` give its exact sample count), and kept beside the store as float rows in
store-row order, one memory-mapped array per feature (chunk ``i`` is ``x[offsets[i]:offsets[i+1]]``),
so a run reads only the arrays of its own workers.

The folder is the mechanism of :mod:`m3bert.pretrain.targets` with a float kind: a commit record
written last (``targets.json``, ``"kind": "workers"``), the store fingerprint (targets are valid
for exactly the frames they were computed from), progress committed every ``commit_every``
chunks (memmaps flushed, then ``.progress.json`` atomically) so a killed build resumes where it
stopped, and :func:`m3bert.pretrain.targets.open_targets` opening it by its kind.

**Standardisation** (from PASE, which normalises its regression targets; Wu et al. do not say):
the record holds each channel's mean and standard deviation over the *training* chunks (the
song-level hold-out of :func:`m3bert.pretrain.data.split_by_group` with the build's ``seed`` and
``val_fraction``, pre-training's defaults), and the reader returns ``(x - mean) / std`` (a
channel whose std is at most 1e-6 is only shifted, the rule of
:func:`m3bert.core.numeric.standardisation` for regression targets). The statistics are
accumulated in float64 over the stored arrays (streaming, :class:`CmvnAccumulator`), so memory
is bounded by one chunk. A run with another seed or hold-out fraction still reads the same
statistics: they only set each target's scale.

Layout of ``TARGETS``::

    targets.json     commit record: kind, workers (letters), features and their widths, dtype,
                     request (settings + store fingerprint), per-channel mean/std, timing
    <feature>.npy    (n_frames_total, n_channels_feature) float32 (or float16), raw feature values
    offsets.npy      (n_chunks + 1,) int64 first frame of each store chunk
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.io import atomic_save_npy, atomic_write_json, exclusive_lock, read_json, versions
from m3bert.core.progress import progress as progress_bar
from m3bert.features.normalize import CmvnAccumulator
from m3bert.features.pool import run_tasks
from m3bert.features.store import FeatureStore
from m3bert.features.waveform import NAME as WAVE_FEATURE_SET
from m3bert.features.waveform import frames_to_waveform
from m3bert.features.wu import WORKER_FEATURES, worker_features
from m3bert.pretrain.data import split_by_group, store_groups
from m3bert.pretrain.targets import FORMAT, TARGET_KINDS, chunk_lengths, read_targets_header, store_fingerprint

KIND = "workers"
FORMAT_VERSION = 1
SAMPLE_RATE = 16_000  # Wu et al. section 3.2: sr = 16000
HOP = 160  # samples per store row = per target frame (10 ms)
DEFAULT_WORKERS = "L,P,M,C,T"  # every feature worker of the paper (W needs no targets: it is the input)
DEFAULT_VAL_FRACTION = 0.05  # pre-training's default song hold-out (pretrain.loop.DataConfig.val_fraction)
MIN_STD = 1e-6  # a channel this flat is shifted, not scaled (core.numeric.standardisation's regression rule)
DTYPES = ("float32", "float16")


def parse_workers(workers: str | Sequence[str], *, allowed: Sequence[str]) -> list[str]:
    """``"W,L,P"`` / ``["W", "L"]`` / ``"WLP"`` -> the letters in the order given; unknown or repeated
    letters are a ``ConfigError`` naming them and the known ones."""
    if isinstance(workers, str):
        text = workers.replace(" ", "")
        items = text.split(",") if "," in text else list(text)
    else:
        items = [str(w).strip() for w in workers]
    items = [w.upper() for w in items if w]
    unknown = [w for w in items if w not in allowed]
    if unknown or not items:
        raise ConfigError(f"workers={workers!r}: unknown worker(s) {unknown or '(none given)'}; expected letters "
                          f"of {','.join(allowed)} (Wu et al.: W waveform, L log power spectrum, P prosody, M MFCC, "
                          "C chroma, T tempogram), e.g. W,L,P,M,C,T")
    if len(set(items)) != len(items):
        raise ConfigError(f"workers={workers!r}: a worker is named twice")
    return items


def feature_keys(letters: Sequence[str]) -> list[str]:
    """Feature keys of the worker letters that have targets (W, the waveform, has none)."""
    return [WORKER_FEATURES[w] for w in letters if w in WORKER_FEATURES]


def chunk_waveform(store: Any, i: int) -> np.ndarray:
    """The samples of store chunk ``i``: its ``(n_frames, 160)`` rows back into a waveform
    (:func:`m3bert.features.waveform.frames_to_waveform`), cut to the chunk's own length
    (``end_s - start_s``; at most the samples the frames hold), so exactly ``n_frames`` target
    frames come out (``1 + n // 160``)."""
    rows = np.asarray(store.get(i, normalize=False), dtype=np.float32)
    row = store.rows[i]
    capacity = (rows.shape[0] - 1) * HOP + HOP // 2  # the last frame is centred on sample (n_frames - 1) * HOP
    n = capacity
    if "start_s" in row and "end_s" in row:
        n = min(capacity, int(round((float(row["end_s"]) - float(row["start_s"])) * SAMPLE_RATE)))
    return frames_to_waveform(rows, n_samples=max(n, (rows.shape[0] - 1) * HOP))


def check_wave_store(store: Any) -> None:
    fs = store.feature_set
    cfg = getattr(fs, "config", None)
    if (getattr(fs, "name", None) != WAVE_FEATURE_SET or getattr(cfg, "hop_length", None) != HOP
            or getattr(cfg, "sample_rate", None) != SAMPLE_RATE):
        raise DataError(f"{getattr(store, 'paths', store)}: worker targets are computed from a {WAVE_FEATURE_SET!r} "
                        f"store of the {SAMPLE_RATE} Hz waveform in rows of {HOP} samples (Wu et al.: 10 ms hops); "
                        f"this store holds {getattr(fs, 'name', None)!r} ({fs.n_channels} channels). Extract one with "
                        f"`m3bert features AUDIO --feature-set {WAVE_FEATURE_SET} --out STORE`")


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

_JOB: dict[str, Any] = {}  # the store and keys of a worker process (set by _init_job)


def _init_job(store: Any, keys: list[str]) -> None:
    _JOB.update(store=store, keys=keys)


def _features_of(i: int) -> dict[str, Any]:
    """One chunk's features (in a worker process or in this one): ``{key: (n_frames, C)}`` + timing."""
    store, keys = _JOB["store"], _JOB["keys"]
    t0, c0 = time.perf_counter(), time.process_time()
    wave = chunk_waveform(store, i)
    feats = worker_features(wave, names=keys, sample_rate=SAMPLE_RATE)
    return {"i": i, "features": feats, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "audio_s": wave.size / SAMPLE_RATE}


def build_worker_targets(store: Any, out: str | os.PathLike, *, workers: str | Sequence[str] = DEFAULT_WORKERS,
                         seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION, dtype: str = "float32",
                         n_workers: int = 1, commit_every: int = 16, progress: bool = True) -> dict[str, Any]:
    """Compute the features of ``workers`` for every chunk of a ``wave16k`` store into ``out``; returns a summary.

    Rerunning with the same settings finishes an interrupted build (or does nothing when
    committed); other settings in an existing ``out`` are refused (``DataError``). ``n_workers``
    processes compute chunks in parallel (results are written in chunk order, so the folder is
    the same for any ``n_workers``).
    """
    if isinstance(store, (str, os.PathLike, list, tuple)):
        store = FeatureStore.open(store)
    letters = parse_workers(workers, allowed=list(WORKER_FEATURES))
    keys = feature_keys(letters)
    for name, value, low in (("seed", seed, 0), ("n_workers", n_workers, 1), ("commit_every", commit_every, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"targets {name}={value!r}; expected an integer >= {low}")
    if dtype not in DTYPES:
        raise ConfigError(f"targets dtype={dtype!r}; expected one of {DTYPES}")
    if len(store) == 0:
        raise DataError(f"{getattr(store, 'paths', store)}: the feature store holds no chunks")
    check_wave_store(store)
    lengths = chunk_lengths(store)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    train, _ = split_by_group(store_groups(store), val_fraction=val_fraction, seed=int(seed))
    request = {"kind": KIND, "workers": letters, "features": keys, "dtype": dtype,
               "settings": {"sample_rate": SAMPLE_RATE, "n_fft": 2048, "hop_length": HOP},
               "standardisation": {"over": "training chunks", "seed": int(seed), "val_fraction": float(val_fraction),
                                   "n_train_chunks": int(len(train)), "min_std": MIN_STD},
               "store": {"fingerprint": store_fingerprint(store), "n_chunks": len(lengths), "n_frames": int(offsets[-1])}}
    out = Path(out)
    if (out / "targets.json").is_file():
        record = read_targets_header(out, kind=None)
        if record.get("request") != request:
            raise DataError(f"{out}: holds targets built with other settings or for another store (stored "
                            f"kind={record.get('kind', 'clusters')!r}, workers={record.get('workers')}); use a new --out")
        return {**_summary(out, record), "already_done": True}
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with exclusive_lock(out / ".lock", what=f"targets folder {out}"):
        timing = _compute_all(out, store, keys, offsets, request=request, n_workers=int(n_workers),
                              commit_every=int(commit_every), progress=progress)
        per_30s = 30.0 / max(timing["audio_s"], 1e-9)  # feature time per 30 s of audio (one store chunk at most)
        timing.update(seconds_per_30s_audio=per_30s * timing["seconds"], cpu_seconds_per_30s_audio=per_30s * timing["cpu_seconds"])
        dims = {k: int(np.load(out / f"{k}.npy", mmap_mode="r").shape[1]) for k in keys}
        stats = {k: _train_stats(out / f"{k}.npy", offsets, train) for k in keys}
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": KIND,
                  "label": "workers-" + "".join(w for w in letters if w in WORKER_FEATURES), "workers": letters,
                  "features": keys, "dims": dims, "dtype": dtype, "stats": stats, "request": request,
                  "timing": timing, "created": time.time(), "versions": versions()}
        atomic_write_json(out / "targets.json", record)  # the commit point
        with contextlib.suppress(OSError):
            (out / ".progress.json").unlink()
    return {**_summary(out, record), "already_done": False, "wall_s": time.perf_counter() - t0}


def _summary(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    return {"targets": str(out), "kind": KIND, "label": record["label"], "workers": record["workers"],
            "features": record["features"], "dims": record["dims"], "n_chunks": record["request"]["store"]["n_chunks"],
            "n_frames": record["request"]["store"]["n_frames"], "timing": record.get("timing")}


def _compute_all(out: Path, store: Any, keys: list[str], offsets: np.ndarray, *, request: dict[str, Any],
                 n_workers: int, commit_every: int, progress: bool) -> dict[str, Any]:
    """Fill ``<key>.npy`` chunk by chunk through memmaps, resuming from ``.progress.json``."""
    prog_path = out / ".progress.json"
    partial = {k: out / f".{k}.partial.npy" for k in keys}
    n_chunks, total = len(offsets) - 1, int(offsets[-1])
    prog = read_json(prog_path) if prog_path.is_file() else {}
    done = int(prog.get("done", 0)) if prog.get("request") == request else 0
    if done >= n_chunks and all((out / f"{k}.npy").is_file() for k in keys) and not any(p.exists() for p in partial.values()):
        return dict(prog["timing"])  # killed between the renames and the commit record
    atomic_save_npy(out / "offsets.npy", offsets)
    arrays: dict[str, np.ndarray] = {}
    if done:
        try:
            arrays = {k: np.lib.format.open_memmap(p, mode="r+") for k, p in partial.items()}
        except (OSError, ValueError):
            arrays, done = {}, 0
        if any(a.shape[0] != total or a.dtype != np.dtype(request["dtype"]) for a in arrays.values()):
            arrays, done = {}, 0
    timing = dict(prog["timing"]) if done else {"seconds": 0.0, "cpu_seconds": 0.0, "audio_s": 0.0}  # of the chunks done
    bar = progress_bar(total=n_chunks, initial=done, desc="targets: workers", unit="chunk", disable=not progress)
    results = run_tasks(_features_of, list(range(done, n_chunks)), workers=n_workers,
                        on_failure=lambda i, why: {"i": i, "error": why}, initializer=_init_job, initargs=(store, keys))
    for res in results:
        i = int(res["i"])
        if "error" in res:
            raise DataError(f"store chunk {i} ({store.rows[i].get('chunk_id')}): worker features failed: {res['error']}")
        a, b = int(offsets[i]), int(offsets[i + 1])
        for k in keys:
            x = np.asarray(res["features"][k])
            if x.ndim != 2 or x.shape[0] != b - a:
                raise DataError(f"store chunk {i} ({store.rows[i].get('chunk_id')}): feature {k!r} has shape {x.shape}, "
                                f"expected ({b - a}, C) to align with the store's {b - a} frames")
            if k not in arrays:
                arrays[k] = np.lib.format.open_memmap(partial[k], mode="w+", dtype=request["dtype"], shape=(total, x.shape[1]))
            arrays[k][a:b] = x
        timing["seconds"] += res["seconds"]
        timing["cpu_seconds"] += res["cpu_seconds"]
        timing["audio_s"] += res["audio_s"]
        bar.update(1)
        if (i + 1) % commit_every == 0 or i + 1 == n_chunks:
            for arr in arrays.values():
                arr.flush()
            atomic_write_json(prog_path, {"request": request, "done": i + 1, "timing": timing})
    bar.close()
    for k in keys:
        arrays[k].flush()
        del arrays[k]
        with open(partial[k], "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial[k], out / f"{k}.npy")
    return timing


def _train_stats(path: Path, offsets: np.ndarray, train: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean/std of one feature over the training chunks (float64 sums, one chunk at a time)."""
    x = np.load(path, mmap_mode="r")
    acc = CmvnAccumulator(int(x.shape[1]))
    for i in train.tolist():
        acc.update(x[offsets[i] : offsets[i + 1]])
    mean, std = acc.mean_std()
    std = np.where(std > MIN_STD, std, 1.0).astype(np.float32)
    return {"mean": mean.tolist(), "std": std.tolist()}


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class WorkerTargets:
    """The committed worker targets of one ``TARGETS`` folder, aligned with the store's chunks.

    ``get(i)`` returns the standardised (or, with ``standardize=False``, raw) features of the
    selected keys; :meth:`select` narrows them to one run's workers.
    """

    kind = KIND

    def __init__(self, path: Path, record: dict[str, Any], arrays: dict[str, np.ndarray], offsets: np.ndarray, *,
                 keys: Sequence[str] | None = None, standardize: bool = True) -> None:
        self.path, self.record, self.arrays, self.offsets = path, record, arrays, offsets
        self.keys = list(keys if keys is not None else record["features"])
        self.standardize = standardize
        self.label = str(record["label"])
        self.mean = {k: np.asarray(record["stats"][k]["mean"], dtype=np.float32) for k in record["features"]}
        self.std = {k: np.asarray(record["stats"][k]["std"], dtype=np.float32) for k in record["features"]}

    @classmethod
    def open(cls, path: str | os.PathLike, *, store: Any = None) -> "WorkerTargets":
        """Open ``path``; with ``store``, refuse targets computed from other frames (``DataError``)."""
        path = Path(path)
        if not (path / "targets.json").is_file():
            hint = " (an interrupted build: rerun the same `m3bert targets --workers` command)" \
                if (path / ".progress.json").is_file() else ""
            raise DataError(f"{path}: no targets.json{hint}; build worker targets with "
                            f"`m3bert targets --workers {DEFAULT_WORKERS} --store STORE --out {path}`")
        record = read_targets_header(path, kind=KIND)
        if int(record.get("format_version", -1)) > FORMAT_VERSION:
            raise DataError(f"{path}/targets.json: format_version={record.get('format_version')} is newer than this "
                            f"m3bert understands ({FORMAT_VERSION}); upgrade m3bert")
        n_frames = int(record["request"]["store"]["n_frames"])
        try:
            offsets = np.load(path / "offsets.npy")
            arrays = {k: np.load(path / f"{k}.npy", mmap_mode="r") for k in record["features"]}
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable worker target arrays ({exc}); rebuild the targets") from exc
        for k, a in arrays.items():
            if a.ndim != 2 or a.shape != (n_frames, int(record["dims"][k])) or offsets[-1] != n_frames:
                raise DataError(f"{path}/{k}.npy: shape {a.shape} for {n_frames} frames of {record['dims'][k]} channels "
                                f"(offsets end at {offsets[-1]}); the folder is damaged: rebuild the targets")
        out = cls(path, record, arrays, offsets)
        if store is not None:
            out.check_store(store)
        return out

    def check_store(self, store: Any) -> None:
        want = self.record["request"]["store"]
        if len(store) != want["n_chunks"] or store_fingerprint(store) != want["fingerprint"]:
            raise DataError(f"{self.path}: worker targets were computed for another store ({want['n_chunks']} chunks, "
                            f"{want['n_frames']} frames, fingerprint {want['fingerprint'][:12]}); this store has "
                            f"{len(store)} chunks, fingerprint {store_fingerprint(store)[:12]}: rebuild them with "
                            f"`m3bert targets --workers ... --store STORE --out NEW`")

    def select(self, keys: Sequence[str], *, standardize: bool = True) -> "WorkerTargets":
        """The same targets restricted to ``keys`` (a ``DataError`` names the worker letters the folder lacks)."""
        missing = [k for k in keys if k not in self.arrays]
        if missing:
            letters = [w for w, k in WORKER_FEATURES.items() if k in missing]
            raise DataError(f"{self.path}: has no targets for worker(s) {letters} ({missing}); it holds "
                            f"{self.record['workers']}: build them with `m3bert targets --workers ...`")
        return WorkerTargets(self.path, self.record, self.arrays, self.offsets, keys=keys, standardize=standardize)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def dim(self, key: str) -> int:
        return int(self.record["dims"][key])

    def get(self, i: int) -> dict[str, np.ndarray]:
        """Features of chunk ``i``'s frames: ``{key: (n_frames_i, C_key)}`` float32."""
        if not 0 <= i < len(self):
            raise IndexError(f"chunk index {i} out of range for targets of {len(self)} chunks")
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        out = {}
        for k in self.keys:
            x = np.asarray(self.arrays[k][a:b], dtype=np.float32)
            out[k] = (x - self.mean[k]) / self.std[k] if self.standardize else x
        return out

    def describe(self) -> dict[str, Any]:
        """Identity recorded in a run: a resumed run must find the same targets."""
        return {"path": str(self.path), "kind": KIND, "label": self.label, "features": self.keys,
                "standardize": self.standardize, "store_fingerprint": self.record["request"]["store"]["fingerprint"],
                "created": self.record.get("created")}


TARGET_KINDS.add(KIND, WorkerTargets)
