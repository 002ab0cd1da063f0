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

One pass for several representations (issue 18): :meth:`FeatureCache.get_many` extracts what
is missing for all the representations of a task in one pass over the clips. A producer thread
(:func:`m3bert.features.pool.prefetch`) decodes each clip once
(:class:`~m3bert.evaluate.representations.ClipAudio`) and hands its audio to every
representation's ``prepare_clip`` (resampling, features, whole baselines; input features are
shared through a memo lent for the pass, so a model and the raw baseline, or two models over
one feature set, featurise each clip once), at most
:data:`PREFETCH_CLIPS` clips ahead; the calling thread runs each representation's
``finish_clips`` (the encoders, batched over clips) in lock step, clip after clip, so what waits
between the stages is bounded by a few encoder batches whatever the number of clips. Parts,
resume and files are per representation, as with :meth:`FeatureCache.get` (= ``get_many`` of
one); a part is written once the encoder batch holding its last clip has run, so a killed run
loses at most one part and one encoder batch per representation. The rows are those each
representation computes alone, bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from m3bert.core.errors import ConfigError, DataError, M3bertError
from m3bert.core.io import atomic_save_npy, atomic_write_json, config_hash, read_json, versions
from m3bert.core.progress import progress as progress_bar
from m3bert.evaluate.representations import PREFETCH_CLIPS, ClipAudio, Representation, fill_failed
from m3bert.features.memo import FeatureMemo
from m3bert.features.pool import prefetch
from m3bert.tasks.registry import Clip

CACHE_FORMAT = "m3bert-feature-cache"
PART_SIZE = 64  # clips per resumable part
# memo of input features lent to one pass: the representations prepare a clip one after the other,
# so a few clips' features (~1.7 MB per 30 s) are all that is ever looked up again
PASS_MEMO_BYTES = 64 << 20


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


def _failure(clip: Clip, exc: BaseException) -> dict[str, str]:
    return {"clip_id": clip.clip_id, "path": str(clip.path), "error": str(exc)}


class _Plan:
    """What one representation still needs in one ``get_many`` call: its parts, rows and files."""

    def __init__(self, rep: Representation, clips: list[Clip], *, parts_dir: Path | None) -> None:
        self.rep, self.clips, self.parts_dir = rep, clips, parts_dir
        self.size = PART_SIZE if parts_dir is not None else max(1, len(clips))
        self.spans = [(a, min(len(clips), a + self.size)) for a in range(0, len(clips), self.size)]
        self.blocks: dict[int, np.ndarray] = {}  # part -> (n, L, D) rows, NaN where failed
        self.failures: dict[int, list[dict[str, str]]] = {}  # part -> its failures
        self.names = rep.layer_names
        self.rows: dict[int, np.ndarray | None] = {}  # clip -> row (None = failed) of the parts in work
        self.todo: set[int] = set()  # clips to extract
        self.n_extracted = 0

    def load_parts(self, skip_errors: bool) -> None:
        """Take the part files a killed run left (when they can be trusted); the rest is to do."""
        for p, (a, b) in enumerate(self.spans):
            ids = [c.clip_id for c in self.clips[a:b]]
            if self.parts_dir is not None:
                part_npy, part_json = self._part_paths(p)
                if part_npy.is_file() and part_json.is_file():
                    meta = read_json(part_json)
                    if meta.get("clip_ids") == ids and (skip_errors or not meta["failures"]):
                        self.blocks[p] = np.load(part_npy, allow_pickle=False)
                        self.failures[p] = list(meta["failures"])
                        self.names = meta.get("layer_names") or self.names
                        continue
            self.todo.update(range(a, b))

    def _part_paths(self, p: int) -> tuple[Path, Path]:
        assert self.parts_dir is not None
        return self.parts_dir / f"part-{p:05d}.npy", self.parts_dir / f"part-{p:05d}.json"

    def take(self, i: int, row: np.ndarray | None, failure: dict[str, str] | None) -> list[tuple[int, np.ndarray]]:
        """Clip ``i``'s row (or failure); a part whose clips are all in is stored (and written),
        and its good rows are returned (for the in-process memo: only rows of finished parts)."""
        self.rows[i] = row
        p = i // self.size
        if failure is not None:
            self.failures.setdefault(p, []).append(failure)
        a, b = self.spans[p]
        if any(k not in self.rows for k in range(a, b)):
            return []
        rows = [self.rows.pop(k) for k in range(a, b)]
        done = [(k, r) for k, r in zip(range(a, b), rows) if r is not None]
        block = fill_failed(rows, len(self.rep.layer_names))
        fails = self.failures.get(p, [])  # in clip order: clips arrive in order
        self.blocks[p], self.failures[p], self.names = block, fails, self.rep.layer_names
        if self.parts_dir is not None:
            part_npy, part_json = self._part_paths(p)
            atomic_save_npy(part_npy, block)
            atomic_write_json(part_json, {"clip_ids": [c.clip_id for c in self.clips[a:b]], "failures": fails,
                                          "layer_names": self.names})
        return done

    def result(self) -> CachedFeatures:
        feats = _concat([self.blocks[p] for p in range(len(self.spans))])
        failures = [f for p in range(len(self.spans)) for f in self.failures.get(p, [])]
        n = len(self.clips)
        ok = ~np.isnan(feats.reshape(n, -1)).any(axis=1) if feats.size else np.ones(n, bool)
        failed_ids = {f["clip_id"] for f in failures}
        ok &= np.array([c.clip_id not in failed_ids for c in self.clips])
        return CachedFeatures(feats, ok, failures, self.names, from_cache=self.n_extracted == 0)


class FeatureCache:
    """``FeatureCache(root).get(rep, task, clips, pooling=...)`` -> :class:`CachedFeatures`;
    ``get_many(reps, ...)`` -> one per representation, all extracted in one pass over the clips.

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
        return self.get_many([rep], task, clips, pooling=pooling, skip_errors=skip_errors, progress=progress)[rep.name]

    def get_many(self, reps: Sequence[Representation], task: str, clips: Sequence[Clip], *, pooling: str = "mean",
                 skip_errors: bool = False, progress: bool = False) -> dict[str, CachedFeatures]:
        """:meth:`get` for each of ``reps`` (by name), extracting what is missing for all of them
        in one pass that decodes each clip once (module docstring)."""
        clips = list(clips)
        if not clips:
            raise DataError(f"task {task}: no clips to embed")
        names = [r.name for r in reps]
        if len(set(names)) != len(names):
            raise ConfigError(f"representation names must be unique, got {names}")
        for rep in reps:
            rep.check_pooling(pooling)
        out: dict[str, CachedFeatures] = {}
        plans: list[_Plan] = []
        finals: dict[str, tuple[str, Path, Path, Path]] = {}
        for rep in reps:
            if not rep.cacheable:  # nothing worth keeping (chance, files read as they are)
                out[rep.name] = self._extract_plain(rep, clips, pooling=pooling, skip_errors=skip_errors,
                                                    progress=progress)
                continue
            parts_dir = None
            if self.root is not None:
                key = cache_key(rep, task, clips, pooling=pooling)
                npy, meta_path, parts_dir = self.paths(rep, task, key)
                hit = _read_final(npy, meta_path, clips, skip_errors=skip_errors)
                if hit is not None:
                    out[rep.name] = hit
                    continue
                parts_dir.mkdir(parents=True, exist_ok=True)
                finals[rep.name] = (key, npy, meta_path, parts_dir)
            plan = _Plan(rep, clips, parts_dir=parts_dir)
            plan.load_parts(skip_errors)
            plans.append(plan)
        if plans:
            self._run(plans, clips, task=task, pooling=pooling, skip_errors=skip_errors, progress=progress)
        for plan in plans:
            res = plan.result()
            if plan.rep.name in finals:
                key, npy, meta_path, parts_dir = finals[plan.rep.name]
                atomic_save_npy(npy, res.features)
                atomic_write_json(meta_path, {
                    "format": CACHE_FORMAT, "key": key, "representation": plan.rep.describe(), "task": task,
                    "pooling": pooling, "shape": list(res.features.shape), "layer_names": res.layer_names,
                    "clip_ids": [c.clip_id for c in clips], "ok": res.ok.tolist(), "failures": res.failures,
                    "versions": versions()})
                shutil.rmtree(parts_dir, ignore_errors=True)
            out[plan.rep.name] = res
        return {name: out[name] for name in names}

    # -- the one pass -----------------------------------------------------------------------------
    def _run(self, plans: list[_Plan], clips: list[Clip], *, task: str, pooling: str, skip_errors: bool,
             progress: bool) -> None:
        """Extract every plan's ``todo`` clips: decode once, prepare ahead, finish in lock step."""
        sigs = [_audio_signature(c) for c in clips]
        memos = [self._memo.setdefault((p.rep.cache_key, pooling), {}) for p in plans]
        for plan, memo in zip(plans, memos):  # rows this process already has (tasks sharing audio)
            for i in sorted(plan.todo):
                if sigs[i] in memo:
                    plan.todo.discard(i)
                    plan.n_extracted += 1
                    plan.take(i, memo[sigs[i]], None)
        wanted = {i: [k for k, p in enumerate(plans) if i in p.todo] for i in sorted(set().union(*(p.todo for p in plans)))}
        if not wanted:
            return

        def produce() -> Iterator[dict[int, Any]]:
            for i, ks in wanted.items():
                audio = ClipAudio(clips[i])
                if any(plans[k].rep.shares_audio for k in ks):
                    audio.decode()
                try:
                    yield {k: plans[k].rep.prepare_clip(audio, pooling=pooling) if plans[k].rep.shares_audio else audio
                           for k in ks}
                finally:
                    if any(plans[k].rep.shares_audio for k in ks):
                        audio.release()

        source = prefetch(produce(), depth=PREFETCH_CLIPS)
        waiting: list[deque[Any]] = [deque() for _ in plans]

        def feed(k: int) -> Iterator[Any]:
            while True:
                if waiting[k]:
                    yield waiting[k].popleft()
                    continue
                prepared = next(source, None)
                if prepared is None:
                    return
                for k2, item in prepared.items():
                    waiting[k2].append(item)

        outs = [p.rep.finish_clips(feed(k), pooling=pooling) for k, p in enumerate(plans)]
        desc = f"features {', '.join(p.rep.name for p in plans)} / {task}"
        bar = progress_bar(total=len(wanted), desc=desc, unit="clip", leave=False) if progress else None
        sharing = contextlib.ExitStack()
        # input features of one clip shared between the representations that read the same ones (a
        # model and the raw baseline; two models over one feature set); a memo lent for this pass
        # (a representation that already has one, e.g. from run_benchmark, keeps its own)
        memo = FeatureMemo(PASS_MEMO_BYTES)
        for p in plans:
            sharing.enter_context(p.rep.sharing_input_features(memo))
        try:
            for i, ks in wanted.items():
                for k in ks:
                    row = next(outs[k])
                    plan = plans[k]
                    plan.n_extracted += 1
                    if isinstance(row, M3bertError):
                        if not skip_errors:
                            raise row
                        done = plan.take(i, None, _failure(clips[i], row))
                    else:
                        done = plan.take(i, np.asarray(row, dtype=np.float32), None)
                    for j, good in done:
                        if sigs[j] not in memos[k] and self._memo_used + good.nbytes <= self.memo_bytes:
                            memos[k][sigs[j]] = good.copy()
                            self._memo_used += good.nbytes
                if bar is not None:
                    bar.update(1)
        finally:
            for o in outs:
                o.close()
            source.close()
            sharing.close()
            if bar is not None:
                bar.close()

    def _extract_plain(self, rep: Representation, clips: list[Clip], *, pooling: str, skip_errors: bool,
                       progress: bool) -> CachedFeatures:
        failures: list[dict[str, str]] = []

        def on_error(clip: Clip, exc: Exception) -> None:
            failures.append(_failure(clip, exc))

        feats = rep.embed_clips(clips, pooling=pooling, progress=progress, on_error=on_error if skip_errors else None)
        failed = {f["clip_id"] for f in failures}
        ok = np.array([c.clip_id not in failed for c in clips], bool)
        return CachedFeatures(feats, ok, failures, rep.layer_names)


def _audio_signature(clip: Clip) -> tuple[Any, ...]:
    """The clip's audio (path, time range, size and mtime), whatever its id or task."""
    return tuple(tuple(x) if isinstance(x, list) else x for x in clip_signature(clip)[1:])


def _read_final(npy: Path, meta_path: Path, clips: list[Clip], *, skip_errors: bool) -> CachedFeatures | None:
    """The finished cache file of these clips, or None; a cached failure raises unless skipped."""
    if not (npy.is_file() and meta_path.is_file()):
        return None
    meta = read_json(meta_path)
    if meta.get("format") != CACHE_FORMAT or meta.get("clip_ids") != [c.clip_id for c in clips]:
        return None
    feats = np.load(npy, mmap_mode=None, allow_pickle=False)
    if feats.shape[0] != len(clips):
        return None
    if meta["failures"] and not skip_errors:
        f = meta["failures"][0]
        raise DataError(f"{f['path']}: {f['error']} (cached failure; use --skip-missing to skip it)")
    return CachedFeatures(feats, np.asarray(meta["ok"], bool), meta["failures"], meta["layer_names"], True)


def _concat(blocks: list[np.ndarray]) -> np.ndarray:
    shapes = {b.shape[1:] for b in blocks if b.shape[-1] > 0}
    if len(shapes) > 1:
        raise DataError(f"feature cache: parts have different shapes {sorted(shapes)}; delete the cache folder")
    if shapes:
        shape = shapes.pop()
        blocks = [b if b.shape[1:] == shape else np.full((b.shape[0], *shape), np.nan, np.float32) for b in blocks]
    return np.concatenate(blocks, axis=0)
