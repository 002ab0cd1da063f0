"""Discrete per-frame targets for masked prediction: k-means over a store (HuBERT / MERT's acoustic teacher).

    summary = build_targets("STORE", "TARGETS", group="mfcc+dmfcc", k=500, seed=0)
    summary = build_targets(store, "TARGETS2", model="RUN", layer=-1, k=2000)   # second iteration
    targets = ClusterTargets.open("TARGETS", store=store)    # targets.get(i) -> (n_frames_i,) int64

The teacher is a feature group of the store (``spec.channels("mfcc+dmfcc")``, after the store's
CMVN, exactly what :meth:`FeatureStore.get` returns) or the hidden state ``layer`` of an encoder run
over those frames (HuBERT's second iteration: "k-means clustering is learned from model outputs'
previous iteration", Yuan 2023 thesis section 4.1.2). Defaults from the thesis: ``k = 500`` for
feature groups (MFCC k=500 beats k=100: Table 5.3, thesis lines 499-500; Table 4.2 line 315-318)
and ``k = 2000`` for hidden states ("for the case of k=2000, we use the 768-dimension deep feature
learned from the first iteration", line 318).

**Fit** (memory bounded by the sample budget, never by the store): a seeded plan picks chunks in
a random order and at most ``frames_per_chunk`` frames of each until ``sample_frames`` frames are
chosen, from the chunk lengths alone; only the planned chunks are read (one at a time), and only
the chosen frames are kept. scikit-learn's ``MiniBatchKMeans`` (k-means++, ``random_state=seed``,
HuBERT's fairseq settings: batch 10,000, ``tol=0``, ``reassignment_ratio=0``) is fitted on that
bounded sample: ``fit`` rather than a stream of ``partial_fit`` calls, because k-means++ then sees
the whole sample and the result is one deterministic function of (sample, seed).

**Assignment**: every frame of every chunk gets the id of its nearest centre, written into one
memory-mapped array in store-row order (chunk ``i`` is ``ids[offsets[i]:offsets[i+1]]``). Progress
is committed every ``commit_every`` chunks (memmap flushed, then ``.progress.json`` atomically), so
a run killed mid-assignment resumes where it stopped; ``targets.json`` is written last (the commit
point): a folder without it holds no targets a reader trusts.

Layout of ``TARGETS``::

    targets.json          commit record: teacher, k, seed, sample plan settings, store fingerprint,
                          ids dtype, cluster usage
    codebook.safetensors  "centers" (k, dim) float32
    codebook.json         the teacher (feature group + channels + store normalisation, or model id +
                          layer), the k-means settings and fit statistics
    ids.npy               (n_frames_total,) int16 (int32 when k > 32767)
    offsets.npy           (n_chunks + 1,) int64 first frame of each store chunk in ids.npy

Other kinds of per-frame targets (Wu et al.'s float worker features, :mod:`m3bert.pretrain.worker_targets`)
use the same folder mechanism and record their ``kind`` in ``targets.json`` (absent = ``clusters``);
:func:`open_targets` opens each folder with the reader registered for its kind (``TARGET_KINDS``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.io import atomic_path, atomic_save_npy, atomic_write_json, config_hash, file_sha1, read_json, versions
from m3bert.core.progress import progress as progress_bar
from m3bert.core.registry import Registry
from m3bert.features.store import FeatureStore
from m3bert.models.hub import check_feature_set, load_encoder, model_id

FORMAT = "m3bert-targets"
FORMAT_VERSION = 1
DEFAULT_GROUP = "mfcc+dmfcc"  # closest to the thesis's MFCC + deltas (39/60-d, line 318); ours has no delta-delta
DEFAULT_K_FEATURES = 500  # thesis Table 5.3 (lines 499-500) / Table 4.2 (line 315-318): MFCC k=500
DEFAULT_K_HIDDEN = 2000  # thesis line 318: k=2000 over the first iteration's hidden states
DEFAULT_SAMPLE_FRAMES = 200_000  # frames the k-means sees (~77 min of audio at 43 frames/s)
DEFAULT_FRAMES_PER_CHUNK = 100  # at most this many frames of one chunk (spreads the sample over songs)
_PLAN = 0x6B3A  # stream id of the sample plan
CLUSTERS = "clusters"  # the kind of a targets folder whose targets.json names none: k-means class ids
TARGET_KINDS: Registry = Registry("targets kind")  # kind -> reader class with .open(path, *, store)


# ---------------------------------------------------------------------------------------------
# Teachers: what is clustered
# ---------------------------------------------------------------------------------------------


@dataclass
class Teacher:
    """Frames to cluster for each store chunk: ``frames(i) -> (n_frames_i, dim)`` float32."""

    frames: Callable[[int], np.ndarray]
    dim: int
    description: dict[str, Any]


def group_teacher(store: Any, group: str) -> Teacher:
    """The channels of ``group`` ('mfcc', 'mel+chroma', ...) of the store's (CMVN-normalised) frames."""
    spec = store.feature_set.spec
    channels = np.asarray(spec.channels(group), dtype=np.int64)
    cmvn = getattr(getattr(store.feature_set, "config", None), "cmvn", None)
    return Teacher(lambda i: np.ascontiguousarray(np.asarray(store.get(i), dtype=np.float32)[:, channels]),
                   int(channels.size),
                   {"kind": "features", "group": group, "channels": [int(channels[0]), int(channels[-1]) + 1]
                    if _contiguous(channels) else channels.tolist(), "feature_set": store.feature_set.name,
                    "normalisation": {"store_cmvn": cmvn}})


def hidden_teacher(store: Any, model: str | os.PathLike, layer: int) -> Teacher:
    """Hidden state ``layer`` (0 = input projection, 1..L transformer layers, -1 the last) of ``model``."""
    encoder, source = load_encoder(model)
    feature_set = check_feature_set(encoder, source=source)
    if config_hash(feature_set.to_dict()) != config_hash(store.feature_set.to_dict()):
        raise DataError(f"--model {model}: trained on feature set {feature_set.name!r} "
                        f"{config_hash(feature_set.to_dict())}, the store holds {store.feature_set.name!r} "
                        f"{config_hash(store.feature_set.to_dict())}; cluster a store of the model's own features")
    n_states = encoder.n_hidden_states
    if not -n_states <= layer < n_states:
        raise ConfigError(f"--layer {layer}: the model has {n_states} hidden states (0 = input projection, "
                          f"1..{n_states - 1}); expected -{n_states}..{n_states - 1}")
    encoder.eval()
    window = int(encoder.cfg.max_frames)

    @torch.no_grad()
    def frames(i: int) -> np.ndarray:
        x = torch.from_numpy(np.asarray(store.get(i), dtype=np.float32))
        parts = [encoder(x[None, s : s + window])[layer][0] for s in range(0, x.shape[0], window)]
        return torch.cat(parts).float().numpy()

    return Teacher(frames, int(encoder.layer_dims[layer]),
                   {"kind": "hidden_states", "model": str(source), "model_id": model_id(encoder, encoder.feature_config),
                    "layer": int(layer), "feature_set": store.feature_set.name,
                    "normalisation": {"store_cmvn": getattr(store.feature_set.config, "cmvn", None)}})


def _contiguous(channels: np.ndarray) -> bool:
    return bool(channels.size) and bool(np.all(np.diff(channels) == 1))


# ---------------------------------------------------------------------------------------------
# Pure pieces: store identity, sample plan, nearest centre
# ---------------------------------------------------------------------------------------------


def store_fingerprint(store: Any) -> str:
    """SHA-1 of the feature set (with its CMVN statistics) and every chunk's id, file hash and length:
    targets are valid for exactly these frames, in this order."""
    h = hashlib.sha1(config_hash(store.feature_set.to_dict(), n_chars=40).encode())
    for r in store.rows:
        h.update(f"{r['chunk_id']}\0{r.get('sha1', '')}\0{int(r['n_frames'])}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def chunk_lengths(store: Any) -> np.ndarray:
    return np.asarray([int(r["n_frames"]) for r in store.rows], dtype=np.int64)


def sample_plan(lengths: Sequence[int], *, seed: int, sample_frames: int, frames_per_chunk: int
                ) -> list[tuple[int, np.ndarray]]:
    """``[(chunk, sorted frame indices)]`` in chunk order: chunks in a seeded random order, at most
    ``frames_per_chunk`` frames of each (seeded per chunk), until ``sample_frames`` are chosen.
    A function of the lengths alone, so nothing is read to plan."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.random.default_rng([seed, _PLAN]).permutation(len(lengths))
    plan, total = [], 0
    for i in order.tolist():
        if total >= sample_frames:
            break
        take = int(min(lengths[i], frames_per_chunk, sample_frames - total))
        if take <= 0:
            continue
        idx = np.sort(np.random.default_rng([seed, _PLAN, i]).choice(int(lengths[i]), take, replace=False))
        plan.append((i, idx))
        total += take
    return sorted(plan, key=lambda p: p[0])


def assign(x: np.ndarray, centers: np.ndarray, *, block: int = 8192) -> np.ndarray:
    """Index of the nearest centre (squared Euclidean) of every row of ``x``: ``(n, d) -> (n,)`` int64."""
    x = np.asarray(x, dtype=np.float32)
    c = np.asarray(centers, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != c.shape[1]:
        raise DataError(f"frames of shape {x.shape} cannot be assigned to centres of dimension {c.shape[1]}")
    c_sq = (c.astype(np.float64) ** 2).sum(1).astype(np.float32)
    out = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], block):
        d = c_sq[None, :] - 2.0 * (x[s : s + block] @ c.T)
        out[s : s + block] = np.argmin(d, axis=1)
    return out


def fit_kmeans(x: np.ndarray, *, k: int, seed: int, batch_size: int = 10_000, max_iter: int = 100,
               n_init: int = 3) -> tuple[np.ndarray, dict[str, Any]]:
    """MiniBatchKMeans on the sample ``x`` -> ``(centres (k, d) float32, fit statistics)``."""
    from sklearn.cluster import MiniBatchKMeans  # heavy: scikit-learn/scipy, needed on this path only

    if x.shape[0] < k:
        raise DataError(f"the sample holds {x.shape[0]} frames, fewer than k={k} clusters; lower --k or "
                        "raise --sample-frames (or use a larger store)")
    t0 = time.perf_counter()
    km = MiniBatchKMeans(n_clusters=k, init="k-means++", random_state=seed, batch_size=min(batch_size, x.shape[0]),
                         max_iter=max_iter, n_init=n_init, tol=0.0, max_no_improvement=100, reassignment_ratio=0.0,
                         compute_labels=False)
    km.fit(x)
    centers = km.cluster_centers_.astype(np.float32)
    labels = assign(x, centers)
    sq = ((x - centers[labels]) ** 2).sum(1)
    counts = np.bincount(labels, minlength=k)
    return centers, {"n_sample": int(x.shape[0]), "mean_sq_distance": float(sq.mean()),
                     "n_iter": int(getattr(km, "n_iter_", 0)), "n_steps": int(getattr(km, "n_steps_", 0)),
                     "empty_clusters_in_sample": int((counts == 0).sum()), "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# Codebook files
# ---------------------------------------------------------------------------------------------


def save_codebook(directory: str | os.PathLike, centers: np.ndarray, meta: dict[str, Any]) -> None:
    """``codebook.safetensors`` (centres) then ``codebook.json`` (teacher, settings), both atomic."""
    directory = Path(directory)
    with atomic_path(directory / "codebook.safetensors") as tmp:
        save_file({"centers": np.ascontiguousarray(centers, dtype=np.float32)}, str(tmp), metadata={"format": FORMAT})
    atomic_write_json(directory / "codebook.json", {**meta, "codebook_sha1": file_sha1(directory / "codebook.safetensors")})


def load_codebook(directory: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """``(centres (k, d) float32, codebook.json)``; DataError naming the file if absent or altered."""
    directory = Path(directory)
    path, meta_path = directory / "codebook.safetensors", directory / "codebook.json"
    if not path.is_file() or not meta_path.is_file():
        raise DataError(f"{directory}: no codebook (codebook.safetensors + codebook.json); build one with `m3bert targets`")
    meta = read_json(meta_path)
    if meta.get("codebook_sha1") != file_sha1(path):
        raise DataError(f"{path}: contents differ from those codebook.json describes (sha1 {meta.get('codebook_sha1')}); "
                        "the codebook was altered: rebuild the targets")
    try:
        centers = load_file(str(path))["centers"]
    except Exception as exc:  # a torn or foreign file
        raise DataError(f"{path}: unreadable codebook ({type(exc).__name__}: {exc})") from exc
    return np.asarray(centers, dtype=np.float32), meta


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    fh = open(directory / ".lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{directory}: another `m3bert targets` is writing here") from None
        yield
    finally:
        fh.close()


def build_targets(store: Any, out: str | os.PathLike, *, group: str | None = None, model: str | None = None,
                  layer: int = -1, k: int | None = None, seed: int = 0, sample_frames: int = DEFAULT_SAMPLE_FRAMES,
                  frames_per_chunk: int = DEFAULT_FRAMES_PER_CHUNK, batch_size: int = 10_000, max_iter: int = 100,
                  n_init: int = 3, commit_every: int = 64, progress: bool = True) -> dict[str, Any]:
    """Fit the codebook (or reuse the one in ``out``), assign every frame, commit; returns a summary.

    Rerunning with the same settings finishes an interrupted run (or does nothing when committed);
    other settings in an existing ``out`` are refused (``DataError``).
    """
    if isinstance(store, (str, os.PathLike, list, tuple)):
        store = FeatureStore.open(store)
    if model is not None and group is not None:
        raise ConfigError("give either --group (cluster store features) or --model (cluster hidden states), not both")
    k = int(k if k is not None else (DEFAULT_K_HIDDEN if model is not None else DEFAULT_K_FEATURES))
    for name, value, low in (("k", k, 2), ("sample_frames", sample_frames, 1), ("frames_per_chunk", frames_per_chunk, 1),
                             ("batch_size", batch_size, 1), ("max_iter", max_iter, 1), ("n_init", n_init, 1),
                             ("commit_every", commit_every, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"targets {name}={value!r}; expected an integer >= {low}")
    if len(store) == 0:
        raise DataError(f"{getattr(store, 'paths', store)}: the feature store holds no chunks")
    teacher = hidden_teacher(store, model, int(layer)) if model is not None else group_teacher(store, group or DEFAULT_GROUP)
    lengths = chunk_lengths(store)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if min(int(sample_frames), int(offsets[-1])) < k:
        raise DataError(f"the sample would hold {min(int(sample_frames), int(offsets[-1]))} frames, fewer than k={k} "
                        "clusters; lower --k or raise --sample-frames (or use a larger store)")
    fingerprint = store_fingerprint(store)
    request = {"teacher": teacher.description, "k": k, "seed": int(seed),
               "sample": {"sample_frames": int(sample_frames), "frames_per_chunk": int(frames_per_chunk)},
               "kmeans": {"algorithm": "sklearn.MiniBatchKMeans", "init": "k-means++", "batch_size": int(batch_size),
                          "max_iter": int(max_iter), "n_init": int(n_init), "tol": 0.0, "reassignment_ratio": 0.0},
               "store": {"fingerprint": fingerprint, "n_chunks": len(lengths), "n_frames": int(offsets[-1])}}
    out = Path(out)
    if (out / "targets.json").is_file():
        record = read_json(out / "targets.json")
        if record.get("request") != request:
            raise DataError(f"{out}: holds targets built with other settings or for another store "
                            f"(stored k={record.get('k')}, teacher={record.get('teacher')}); use a new --out")
        return {**_summary(out, record), "already_done": True}
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _exclusive(out):
        centers, meta = _codebook(out, teacher, request, lengths, progress=progress)
        dtype = np.int16 if k <= np.iinfo(np.int16).max else np.int32
        _assign_all(out, teacher, centers, offsets, dtype=dtype, key={"codebook_sha1": meta["codebook_sha1"],
                    "store": fingerprint}, commit_every=commit_every, progress=progress)
        counts = _usage(out / "ids.npy", k)
        p = counts / max(counts.sum(), 1)
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, "label": _label(teacher.description, k),
                  "k": k, "dim": teacher.dim, "teacher": teacher.description, "ids_dtype": np.dtype(dtype).name,
                  "codebook_sha1": meta["codebook_sha1"], "fit": meta["fit"], "request": request,
                  "usage": {"clusters_used": int((counts > 0).sum()),
                            "perplexity": float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())),
                            "largest_cluster_fraction": float(p.max())},
                  "created": time.time(), "versions": versions()}
        atomic_write_json(out / "targets.json", record)  # the commit point
        with contextlib.suppress(OSError):
            (out / ".progress.json").unlink()
    return {**_summary(out, record), "already_done": False, "wall_s": time.perf_counter() - t0}


def _label(teacher: dict[str, Any], k: int) -> str:
    if teacher["kind"] == "features":
        return f"{teacher['group']}-k{k}"
    return f"layer{teacher['layer']}-k{k}"


def _summary(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    return {"targets": str(out), "label": record["label"], "k": record["k"], "teacher": record["teacher"],
            "n_chunks": record["request"]["store"]["n_chunks"], "n_frames": record["request"]["store"]["n_frames"],
            "fit": record["fit"], "usage": record["usage"]}


def _codebook(out: Path, teacher: Teacher, request: dict[str, Any], lengths: np.ndarray, *, progress: bool
              ) -> tuple[np.ndarray, dict[str, Any]]:
    """The codebook of ``out`` if it was fitted for ``request``; else fit and save it."""
    if (out / "codebook.json").is_file():
        centers, meta = load_codebook(out)
        if meta.get("request") != request:
            raise DataError(f"{out}/codebook.json: fitted with other settings or for another store; use a new --out")
        return centers, meta
    plan = sample_plan(lengths, seed=request["seed"], sample_frames=request["sample"]["sample_frames"],
                       frames_per_chunk=request["sample"]["frames_per_chunk"])
    sample = np.empty((sum(len(idx) for _, idx in plan), teacher.dim), dtype=np.float32)
    pos = 0
    bar = progress_bar(total=len(plan), desc="targets: sample", unit="chunk", disable=not progress)
    for i, idx in plan:
        x = teacher.frames(i)
        if x.shape[0] != lengths[i]:
            raise DataError(f"store chunk {i}: {x.shape[0]} frames, the store index says {lengths[i]} (corrupt store)")
        sample[pos : pos + len(idx)] = x[idx]
        pos += len(idx)
        bar.update(1)
    bar.close()
    km = request["kmeans"]
    centers, fit = fit_kmeans(sample, k=request["k"], seed=request["seed"], batch_size=km["batch_size"],
                              max_iter=km["max_iter"], n_init=km["n_init"])
    fit["n_chunks_read"] = len(plan)
    save_codebook(out, centers, {"format": FORMAT, "k": request["k"], "dim": teacher.dim,
                                 "teacher": teacher.description, "request": request, "fit": fit})
    return load_codebook(out)


def _assign_all(out: Path, teacher: Teacher, centers: np.ndarray, offsets: np.ndarray, *, dtype: Any,
                key: dict[str, Any], commit_every: int, progress: bool) -> None:
    """Fill ``ids.npy`` chunk by chunk through a memmap, resuming from ``.progress.json``."""
    partial, prog_path, final = out / ".ids.partial.npy", out / ".progress.json", out / "ids.npy"
    n_chunks, total = len(offsets) - 1, int(offsets[-1])
    prog = read_json(prog_path) if prog_path.is_file() else {}
    done = int(prog.get("done", 0)) if {k: prog.get(k) for k in key} == key else 0
    if done >= n_chunks and final.is_file() and not partial.exists():
        return  # killed between the rename and the commit record
    atomic_save_npy(out / "offsets.npy", offsets)
    if done and partial.is_file():
        ids = np.lib.format.open_memmap(partial, mode="r+")
        if ids.shape != (total,) or ids.dtype != np.dtype(dtype):
            ids, done = None, 0
    else:
        ids, done = None, 0
    if ids is None:
        ids = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(total,))
    bar = progress_bar(total=n_chunks, initial=done, desc="targets: assign", unit="chunk", disable=not progress)
    for i in range(done, n_chunks):
        x = teacher.frames(i)
        a, b = int(offsets[i]), int(offsets[i + 1])
        if x.shape[0] != b - a:
            raise DataError(f"store chunk {i}: {x.shape[0]} frames, the store index says {b - a} (corrupt store)")
        ids[a:b] = assign(x, centers).astype(dtype)
        bar.update(1)
        if (i + 1) % commit_every == 0 or i + 1 == n_chunks:
            ids.flush()
            atomic_write_json(prog_path, {**key, "done": i + 1})
    bar.close()
    ids.flush()
    del ids
    with open(partial, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, final)


def _usage(path: Path, k: int, *, block: int = 1 << 22) -> np.ndarray:
    ids = np.load(path, mmap_mode="r")
    counts = np.zeros(k, dtype=np.int64)
    for s in range(0, ids.shape[0], block):
        counts += np.bincount(np.asarray(ids[s : s + block], dtype=np.int64), minlength=k)
    return counts


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class ClusterTargets:
    """The committed targets of one ``TARGETS`` folder, aligned with the store's chunks."""

    def __init__(self, path: Path, record: dict[str, Any], ids: np.ndarray, offsets: np.ndarray) -> None:
        self.path, self.record, self.ids, self.offsets = path, record, ids, offsets
        self.k = int(record["k"])
        self.label = str(record["label"])

    @classmethod
    def open(cls, path: str | os.PathLike, *, store: Any = None) -> "ClusterTargets":
        """Open ``path``; with ``store``, refuse targets built for other frames (``DataError``)."""
        path = Path(path)
        head = path / "targets.json"
        if not head.is_file():
            hint = " (an interrupted build: rerun the same `m3bert targets` command)" if (path / "codebook.json").is_file() else ""
            raise DataError(f"{path}: no targets.json{hint}; build targets with `m3bert targets --store STORE --out {path}`")
        record = read_json(head)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise DataError(f"{head}: format={record.get('format') if isinstance(record, dict) else None!r}, expected {FORMAT!r}")
        if int(record.get("format_version", -1)) > FORMAT_VERSION:
            raise DataError(f"{head}: format_version={record.get('format_version')} is newer than this m3bert "
                            f"understands ({FORMAT_VERSION}); upgrade m3bert")
        try:
            ids = np.load(path / "ids.npy", mmap_mode="r")
            offsets = np.load(path / "offsets.npy")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable ids.npy / offsets.npy ({exc}); rebuild the targets") from exc
        n_frames = int(record["request"]["store"]["n_frames"])
        if ids.ndim != 1 or ids.shape[0] != n_frames or offsets[-1] != n_frames:
            raise DataError(f"{path}/ids.npy: {ids.shape} ids for {n_frames} frames (offsets end at {offsets[-1]}); "
                            "the folder is damaged: rebuild the targets")
        out = cls(path, record, ids, offsets)
        if store is not None:
            out.check_store(store)
        return out

    def check_store(self, store: Any) -> None:
        want = self.record["request"]["store"]
        if len(store) != want["n_chunks"] or store_fingerprint(store) != want["fingerprint"]:
            raise DataError(f"{self.path}: targets were built for another store ({want['n_chunks']} chunks, "
                            f"{want['n_frames']} frames, fingerprint {want['fingerprint'][:12]}); this store has "
                            f"{len(store)} chunks, fingerprint {store_fingerprint(store)[:12]}: rebuild them with "
                            f"`m3bert targets --store STORE --out NEW`")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> np.ndarray:
        """Class ids of chunk ``i``'s frames: ``(n_frames_i,)`` int64."""
        if not 0 <= i < len(self):
            raise IndexError(f"chunk index {i} out of range for targets of {len(self)} chunks")
        return np.asarray(self.ids[self.offsets[i] : self.offsets[i + 1]], dtype=np.int64)

    def centers(self) -> np.ndarray:
        return load_codebook(self.path)[0]

    def describe(self) -> dict[str, Any]:
        """Identity recorded in a run: a resumed run must find the same targets."""
        return {"path": str(self.path), "label": self.label, "k": self.k, "teacher": self.record["teacher"],
                "codebook_sha1": self.record["codebook_sha1"], "store_fingerprint": self.record["request"]["store"]["fingerprint"]}


TARGET_KINDS.add(CLUSTERS, ClusterTargets)


def read_targets_header(path: str | os.PathLike, *, kind: str | None = CLUSTERS) -> dict[str, Any]:
    """``targets.json`` of a committed TARGETS folder (k, label, teacher), without opening the ids;
    a folder of another ``kind`` than asked (``None``: any) is a ``DataError`` naming both."""
    head = Path(path) / "targets.json"
    if not head.is_file():
        raise DataError(f"{path}: no targets.json; build targets with `m3bert targets --store STORE --out {path}`")
    record = read_json(head)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{head}: not an m3bert targets record (format={record.get('format') if isinstance(record, dict) else None!r})")
    if kind is not None and record.get("kind", CLUSTERS) != kind:
        raise DataError(f"{head}: holds {record.get('kind')!r} targets, expected {kind!r} targets here")
    return record


def open_targets(paths: Sequence[str | os.PathLike], *, store: Any) -> list[Any]:
    """Every TARGETS folder of an objective config, checked against ``store``, each opened by the
    reader registered for the kind its ``targets.json`` records (a folder without one: k-means ids,
    whose reader explains an interrupted build)."""
    kinds = [read_json(Path(p) / "targets.json").get("kind", CLUSTERS) if (Path(p) / "targets.json").is_file()
             else CLUSTERS for p in paths]
    return [TARGET_KINDS.lookup(k).open(p, store=store) for k, p in zip(kinds, paths)]
