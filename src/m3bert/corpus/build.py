"""The built-in labelled corpus: presets, the build plan, and the resumable parallel build.

``build_corpus("small", "CORPUS")`` chooses real compositions from music21's bundled corpus
(stratified by label, one composition per group), assigns every *composition* to a split,
decides how each is performed (GM program, tempo, transposition, which parts play), renders the
performances to 44.1 kHz mono WAV and writes an ordinary dataset layout::

    CORPUS/audio/{tune,ensemble,note}/<clip_id>.wav
    CORPUS/metadata.jsonl            one JSON row per clip (labels, split, piece/group, render settings)
    CORPUS/splits/{train,valid,test}.txt   audio paths relative to CORPUS, one per line
    CORPUS/corpus.json               preset, seed, renderer (+ soundfont), counts, failures, timings, versions

Everything random is drawn from ``seed`` while planning, so the plan (and, for a given renderer
and soundfont, every sample) is the same on every run. The build is resumable: finished clips
are journalled in ``CORPUS/.build/journal.jsonl`` after their WAV is in place (written
atomically), and a rerun renders only what is missing. Pieces music21 cannot parse, or that do
not yield a usable performance, are skipped and counted, never fatal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from m3bert.core.errors import DataError
from m3bert.core.io import atomic_path, atomic_write_json, atomic_write_text, config_hash, read_json, versions
from m3bert.core.progress import progress as progress_bar
from m3bert.corpus import scores as sc
from m3bert.corpus.layout import FORMAT, FORMAT_VERSION, SPLITS, TASK_LABELS, pitch_name, row_has_label, task_classes
from m3bert.corpus.plan import CorpusPreset, clip_row, get_preset, perform, plan_corpus
from m3bert.corpus.render import get_renderer, resolve_renderer_name

_WORKER: dict[str, Any] = {}


def _worker_renderer(name: str, soundfont: str | None):

    key = (name, soundfont)
    if _WORKER.get("key") != key:
        _WORKER["renderer"] = get_renderer(name, soundfont=soundfont)
        _WORKER["key"] = key
    return _WORKER["renderer"]


def _render_unit(unit: list[dict[str, Any]], out: str, renderer_name: str, soundfont: str | None) -> list[dict[str, Any]]:
    """Render the clips of one piece (or one note); returns journal records (rows or failures)."""

    renderer = _worker_renderer(renderer_name, soundfont)
    piece = None
    records = []
    first = unit[0]
    if first["kind"] != "note":
        try:
            piece = sc.load_piece(sc.PieceRef(**first["ref"]))
        except Exception as exc:  # noqa: BLE001  (a bad score is counted, never fatal)
            return [{"failed": s["clip_id"], "piece": first["piece"], "error": f"{type(exc).__name__}: {exc}"} for s in unit]
    for spec in unit:
        try:
            tracks, duration, labels = perform(spec, piece)
            audio = renderer.render(tracks, duration=duration, seed=spec["seed"])
            path = Path(out) / "audio" / spec["kind"] / f"{spec['clip_id']}.wav"
            with atomic_path(path) as tmp:
                sf.write(tmp, audio, renderer.sample_rate, subtype="PCM_16", format="WAV")
            records.append({"row": clip_row(spec, labels, audio.size / renderer.sample_rate, renderer.name)})
        except Exception as exc:  # noqa: BLE001
            records.append({"failed": spec["clip_id"], "piece": spec["piece"], "error": f"{type(exc).__name__}: {exc}"})
    return records


# -- the build --------------------------------------------------------------------------------

def _read_journal(path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    with open(path, "r", encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a torn last line from an interrupted run
                continue
            if "row" in rec:
                done[rec["row"]["clip_id"]] = rec["row"]
    return done


def build_corpus(preset: str | CorpusPreset, out: str | os.PathLike, *, seed: int = 0, renderer: str = "auto",
                 progress: bool = True, soundfont: str | os.PathLike | None = None,
                 workers: int | None = None) -> dict[str, Any]:
    """Build (or resume, or confirm) the built-in corpus in ``out``; returns the summary in corpus.json.

    ``renderer``: "auto" (FluidSynth when usable, else numpy), "fluidsynth" or "numpy".
    ``workers``: processes (None: 1 for small plans, else up to the CPU count).
    """

    t0 = time.time()
    preset = get_preset(preset)
    out = Path(out)
    name = resolve_renderer_name(renderer, soundfont=soundfont)
    rend = get_renderer(name, soundfont=soundfont)
    described = rend.describe()
    sf_path = described.get("soundfont")
    specs = plan_corpus(preset, seed=seed)
    identity = {"format": FORMAT, "format_version": FORMAT_VERSION, "preset": dataclasses.asdict(preset),
                "seed": int(seed), "renderer": described, "n_clips_planned": len(specs)}
    ident_hash = config_hash(identity)
    build_dir = out / ".build"
    build_dir.mkdir(parents=True, exist_ok=True)
    plan_file = build_dir / "plan.json"
    if plan_file.is_file():
        prev = read_json(plan_file)
        if prev.get("hash") != ident_hash:
            raise DataError(f"{out} holds a corpus built with different settings (preset "
                            f"{prev.get('identity', {}).get('preset', {}).get('name')!r}, seed "
                            f"{prev.get('identity', {}).get('seed')!r}, renderer "
                            f"{prev.get('identity', {}).get('renderer', {}).get('renderer')!r}); expected preset "
                            f"{preset.name!r}, seed {seed}, renderer {name!r}: use another --out folder")
    else:
        atomic_write_json(plan_file, {"hash": ident_hash, "identity": identity})
    journal_path = build_dir / "journal.jsonl"
    done = _read_journal(journal_path)
    done = {cid: row for cid, row in done.items() if (out / row["path"]).is_file()}
    todo = [s for s in specs if s["clip_id"] not in done]
    units: dict[str, list[dict[str, Any]]] = {}
    for s in todo:
        units.setdefault(s["piece"] or s["clip_id"], []).append(s)
    unit_list = list(units.values())
    if workers is None:
        workers = 1 if len(todo) < 80 else max(1, min(os.cpu_count() or 1, 8))
    failures: list[dict[str, Any]] = []
    n_rendered = 0
    bar = None
    if progress:

        bar = progress_bar(total=len(specs), initial=len(specs) - len(todo), desc=f"corpus {preset.name} ({name})", unit="clip")
    with open(journal_path, "a", encoding="utf-8") as journal:
        def consume(records: list[dict[str, Any]]) -> None:
            nonlocal n_rendered
            for rec in records:
                if "row" in rec:
                    done[rec["row"]["clip_id"]] = rec["row"]
                    n_rendered += 1
                else:
                    failures.append(rec)
                journal.write(json.dumps(rec) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
            if bar is not None:
                bar.update(len(records))

        if workers <= 1 or len(unit_list) <= 1:
            for unit in unit_list:
                consume(_render_unit(unit, str(out), name, sf_path))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_render_unit, unit, str(out), name, sf_path) for unit in unit_list]
                for fut in as_completed(futures):
                    consume(fut.result())
    if bar is not None:
        bar.close()
    rend.close()
    rows = [done[s["clip_id"]] for s in specs if s["clip_id"] in done]
    if not rows:
        raise DataError(f"corpus build in {out}: no clip could be rendered ({len(failures)} failures, first: "
                        f"{failures[0]['error'] if failures else 'none'})")
    atomic_write_text(out / "metadata.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    for split in SPLITS:
        atomic_write_text(out / "splits" / f"{split}.txt", "".join(r["path"] + "\n" for r in rows if r["split"] == split))
    summary = _summary(rows, specs, failures, preset, seed, described, time.time() - t0, out, n_rendered)
    atomic_write_json(out / "corpus.json", summary)
    return summary


def _summary(rows, specs, failures, preset, seed, described, seconds, out: Path, n_rendered: int) -> dict[str, Any]:

    per_task = {}
    for task, label in TASK_LABELS.items():
        per_task[task] = {s: sum(1 for r in rows if r["split"] == s and row_has_label(r, label)) for s in SPLITS}
    failed_pieces = sorted({f["piece"] or f["failed"] for f in failures})
    keyed = [r for r in rows if r.get("key_original") and r.get("key_analysed") and r["kind"] != "note"]
    size = sum((out / r["path"]).stat().st_size for r in rows)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "preset": preset.name,
        "preset_config": dataclasses.asdict(preset), "seed": int(seed),
        **{"renderer": described["renderer"], "sample_rate": described["sample_rate"],
           "soundfont": described.get("soundfont"), "soundfont_sha1": described.get("soundfont_sha1")},
        "n_clips": len(rows), "n_planned": len(specs), "n_rendered_this_run": n_rendered,
        "n_resumed": len(rows) - n_rendered, "n_failed": len(specs) - len(rows),
        "failed_pieces": failed_pieces, "failures": failures[:200],
        "clips_per_split": {s: sum(r["split"] == s for r in rows) for s in SPLITS},
        "clips_per_kind": {k: sum(r["kind"] == k for r in rows) for k in ("tune", "ensemble", "note")},
        "clips_per_task": per_task,
        "audio_seconds": round(sum(r["duration"] for r in rows), 2), "size_bytes": int(size),
        "key_label_agrees_with_music21_analysis": round(float(np.mean([r["key_original"] == r["key_analysed"] for r in keyed])), 4) if keyed else None,
        "classes": {**task_classes(), "pitch": [pitch_name(p) for p in sorted(preset.note_pitches)]},
        "build_seconds": round(seconds, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "licence": "compositions and encodings from music21's corpus; see music21/corpus/license.txt and "
                   "essenFolksong/license.txt (non-commercial use for Essen); m3bert/corpus/LICENSES.md",
    }

