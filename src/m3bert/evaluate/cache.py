"""On-disk feature cache: each (representation, task, clip set, layers, pooling) is extracted once.

Why: the MARBLE grid trains dozens of probes per seed; they all read the same frozen features,
and extracting them (decoding + encoder) costs far more than probing. The cache makes sweeping
protocols, seeds and probe settings cheap, and makes an interrupted extraction resumable.

Layout (``CACHE/<representation>/<task>/``)::

    <key>.npy        (n_clips, n_layers, D) float32, rows in clip order; NaN rows = failed clips
    <key>.json       what it is: representation cache_key, task, pooling, clip ids, failures, versions
    <key>.parts/     while extracting: part-00000.npy + part-00000.json per block of clips (resume)

The key hashes the representation's ``cache_key`` (model weights hash, settings, code version),
the task name, the clip list (id, path, start, end, and each file's size and mtime, so edited
audio is re-extracted), the layer set and the pooling. Every file is written atomically, and the
``.json`` is written last, so a ``.npy`` without its ``.json`` is never trusted.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from m3bert.core.errors import DataError
from m3bert.core.io import atomic_save_npy, atomic_write_json, config_hash, read_json, versions
from m3bert.core.progress import progress as progress_bar
from m3bert.evaluate.representations import Representation
from m3bert.tasks.registry import Clip

CACHE_FORMAT = "m3bert-feature-cache"
PART_SIZE = 64  # clips per resumable part


@dataclass
class CachedFeatures:
    """Features of a clip list plus which clips failed."""

    features: np.ndarray  # (n_clips, n_layers, D) float32; NaN rows where ok is False
    ok: np.ndarray  # (n_clips,) bool
    failures: list[dict[str, str]] = field(default_factory=list)  # {"clip_id", "path", "error"}
    layer_names: list[str] = field(default_factory=list)
    from_cache: bool = False  # True when nothing had to be extracted


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)[:80] or "_"


def clip_signature(clip: Clip) -> list[Any]:
    try:
        st = os.stat(clip.path)
        stamp = [st.st_size, st.st_mtime_ns]
    except OSError:
        stamp = None
    return [clip.clip_id, str(clip.path), clip.start, clip.end, stamp]


def cache_key(rep: Representation, task: str, clips: Sequence[Clip], *, pooling: str, layers: str = "all") -> str:
    return config_hash({"format": CACHE_FORMAT, "representation": rep.cache_key, "task": task, "pooling": pooling,
                        "layers": layers, "clips": [clip_signature(c) for c in clips]}, n_chars=20)


class FeatureCache:
    """``FeatureCache(root).get(rep, task, clips, pooling=...)`` -> :class:`CachedFeatures`.

    ``root=None`` keeps nothing on disk (features are computed every time).
    """

    def __init__(self, root: str | Path | None, *, memo_bytes: int = 1 << 30) -> None:
        self.root = Path(root) if root is not None else None
        # Rows already extracted in this process, per (representation, pooling) and clip audio
        # (path, time range, size, mtime): tasks that share audio (a tune labelled for dance, key
        # and tempo; MTG-Jamendo's four tag sets) embed each clip once. Bounded by memo_bytes.
        self.memo_bytes = int(memo_bytes)
        self._memo: dict[tuple[str, str], dict[tuple[Any, ...], np.ndarray]] = {}
        self._memo_used = 0

    def paths(self, rep: Representation, task: str, key: str) -> tuple[Path, Path, Path]:
        assert self.root is not None
        d = self.root / _safe(rep.name) / _safe(task)
        return d / f"{key}.npy", d / f"{key}.json", d / f"{key}.parts"

    def get(self, rep: Representation, task: str, clips: Sequence[Clip], *, pooling: str = "mean",
            skip_errors: bool = False, progress: bool = False) -> CachedFeatures:
        """Cached features, extracting (and storing) what is missing.

        ``skip_errors``: a clip that cannot be embedded is recorded in ``failures`` and its row
        is NaN; otherwise the first failure raises (naming the file).
        """
        clips = list(clips)
        if not clips:
            raise DataError(f"task {task}: no clips to embed")
        rep.check_pooling(pooling)
        if self.root is None or not rep.cacheable:
            return self._extract(rep, clips, pooling=pooling, skip_errors=skip_errors, progress=progress)
        key = cache_key(rep, task, clips, pooling=pooling)
        npy, meta_path, parts = self.paths(rep, task, key)
        if npy.is_file() and meta_path.is_file():
            meta = read_json(meta_path)
            if meta.get("format") == CACHE_FORMAT and meta.get("clip_ids") == [c.clip_id for c in clips]:
                feats = np.load(npy, mmap_mode=None, allow_pickle=False)
                if feats.shape[0] == len(clips):
                    if meta["failures"] and not skip_errors:
                        f = meta["failures"][0]
                        raise DataError(f"{f['path']}: {f['error']} (cached failure; use --skip-missing to skip it)")
                    return CachedFeatures(feats, np.asarray(meta["ok"], bool), meta["failures"], meta["layer_names"], True)
        parts.mkdir(parents=True, exist_ok=True)
        blocks, failures, names = [], [], rep.layer_names
        n_done = 0
        bar = progress_bar(total=len(clips), desc=f"features {rep.name} / {task}", unit="clip", leave=False) if progress else None
        for p, start in enumerate(range(0, len(clips), PART_SIZE)):
            chunk = clips[start:start + PART_SIZE]
            part_npy, part_json = parts / f"part-{p:05d}.npy", parts / f"part-{p:05d}.json"
            if part_npy.is_file() and part_json.is_file():
                pmeta = read_json(part_json)
                if pmeta.get("clip_ids") == [c.clip_id for c in chunk] and (skip_errors or not pmeta["failures"]):
                    blocks.append(np.load(part_npy, allow_pickle=False))
                    failures += pmeta["failures"]
                    names = pmeta.get("layer_names") or names
                    if bar is not None:
                        bar.update(len(chunk))
                    continue
            res = self._extract(rep, chunk, pooling=pooling, skip_errors=skip_errors, progress=False)
            names = rep.layer_names
            atomic_save_npy(part_npy, res.features)
            atomic_write_json(part_json, {"clip_ids": [c.clip_id for c in chunk], "failures": res.failures,
                                          "layer_names": names})
            blocks.append(res.features)
            failures += res.failures
            n_done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        feats = _concat(blocks)
        ok = ~np.isnan(feats.reshape(len(clips), -1)).any(axis=1) if feats.size else np.ones(len(clips), bool)
        failed_ids = {f["clip_id"] for f in failures}
        ok &= np.array([c.clip_id not in failed_ids for c in clips])
        atomic_save_npy(npy, feats)
        atomic_write_json(meta_path, {
            "format": CACHE_FORMAT, "key": key, "representation": rep.describe(), "task": task, "pooling": pooling,
            "shape": list(feats.shape), "layer_names": names, "clip_ids": [c.clip_id for c in clips],
            "ok": ok.tolist(), "failures": failures, "versions": versions()})
        shutil.rmtree(parts, ignore_errors=True)
        return CachedFeatures(feats, ok, failures, names, from_cache=n_done == 0)

    def _extract(self, rep: Representation, clips: list[Clip], *, pooling: str, skip_errors: bool,
                 progress: bool) -> CachedFeatures:
        failures: list[dict[str, str]] = []

        def on_error(clip: Clip, exc: Exception) -> None:
            failures.append({"clip_id": clip.clip_id, "path": str(clip.path), "error": str(exc)})

        memo = self._memo.setdefault((rep.cache_key, pooling), {}) if rep.cacheable else {}
        sigs = [tuple(tuple(x) if isinstance(x, list) else x for x in clip_signature(c)[1:]) for c in clips]
        todo = [i for i, s in enumerate(sigs) if s not in memo]
        new = (rep.embed_clips([clips[i] for i in todo], pooling=pooling, progress=progress,
                               on_error=on_error if skip_errors else None) if todo else None)
        if new is not None and len(todo) == len(clips):
            feats = new
        else:
            shape = new.shape[1:] if new is not None else next(iter(memo.values())).shape
            feats = np.empty((len(clips), *shape), np.float32)
            for i, s in enumerate(sigs):
                if s in memo:
                    feats[i] = memo[s]
            if new is not None:
                feats[todo] = new
        failed = {f["clip_id"] for f in failures}
        for i in todo if rep.cacheable else ():
            if clips[i].clip_id not in failed and self._memo_used + feats[i].nbytes <= self.memo_bytes:
                memo[sigs[i]] = feats[i].copy()
                self._memo_used += feats[i].nbytes
        ok = np.array([c.clip_id not in failed for c in clips], bool)
        return CachedFeatures(feats, ok, failures, rep.layer_names)


def _concat(blocks: list[np.ndarray]) -> np.ndarray:
    shapes = {b.shape[1:] for b in blocks if b.shape[-1] > 0}
    if len(shapes) > 1:
        raise DataError(f"feature cache: parts have different shapes {sorted(shapes)}; delete the cache folder")
    if shapes:
        shape = shapes.pop()
        blocks = [b if b.shape[1:] == shape else np.full((b.shape[0], *shape), np.nan, np.float32) for b in blocks]
    return np.concatenate(blocks, axis=0)
