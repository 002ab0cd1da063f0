"""The build plan: presets, which compositions, which split, and how each clip is performed.

Everything random is drawn from ``seed`` while planning, so the plan (and, for a given renderer
and soundfont, every sample) is the same on every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.corpus import scores as sc
from m3bert.corpus.layout import (
    ENSEMBLE_PROGRAMS,
    GM_NAMES,
    MELODY_PROGRAMS,
    ROLE_GAIN,
    SPLITS,
    TAG_CLASSES,
    pitch_name,
    program_label,
)
from m3bert.corpus.render import Note, Track


@dataclass(frozen=True)
class CorpusPreset:
    """How much of each family to render and how."""

    name: str  # preset name recorded in corpus.json
    dance_per_class: int  # O'Neill's/Ryan's tunes per dance type (capped by what exists)
    essen_per_region: int  # Essen songs per region (capped by what exists)
    n_chorales: int  # Bach chorales rendered as ensembles (tags task)
    renders_per_piece: int  # performances per tune (program/tempo/transposition differ)
    chorale_renders: int  # performances per chorale (different subsets of parts, programs, tempi)
    note_pitches: tuple[int, ...]  # MIDI pitches of the single-note (pitch) task
    note_programs_per_pitch: int  # programs each pitch is played on (from MELODY_PROGRAMS)
    clip_seconds: float  # length of tune/ensemble excerpts (from the start of the piece)
    note_seconds: float  # how long a single note is held (clip adds a 0.5 s release)
    # quarter-note BPM drawn uniformly (inclusive); kept under one octave (140/72 < 2) because a
    # tempo and its double sound alike in dense folk melodies: a wider range makes the label ambiguous
    tempo_range: tuple[int, int] = (72, 140)
    transpose_range: tuple[int, int] = (-5, 6)  # semitones drawn uniformly (inclusive): all 24 keys
    valid_fraction: float = 0.15  # of the compositions of each class
    test_fraction: float = 0.15  # of the compositions of each class
    extra_abc: tuple[str, ...] = ()  # user ABC files added as tunes (labels from their R:/O:/K:)


PRESETS: dict[str, CorpusPreset] = {
    # tests: ~50 clips of <= 5.5 s, every task in every split
    "tiny": CorpusPreset("tiny", dance_per_class=3, essen_per_region=3, n_chorales=6, renders_per_piece=1,
                         chorale_renders=1, note_pitches=(48, 60, 72, 84), note_programs_per_pitch=3,
                         clip_seconds=5.0, note_seconds=1.0),
    # the demo: ~800 clips, ~1 h of audio, a few minutes on 2 cores
    "small": CorpusPreset("small", dance_per_class=40, essen_per_region=40, n_chorales=60, renders_per_piece=1,
                          chorale_renders=3, note_pitches=tuple(range(48, 85)), note_programs_per_pitch=6,
                          clip_seconds=6.0, note_seconds=1.0),
    # decisive test sets (issue 17): ~1,340 clips of 6 s (1.7x small; strathspeys cap at 49 pieces), so that grouped
    # k-fold tests ~360 dance, ~670 key and ~1,050 tempo clips; same clip length as small (features cost per clip alike)
    "medium": CorpusPreset("medium", dance_per_class=80, essen_per_region=80, n_chorales=100, renders_per_piece=1,
                           chorale_renders=3, note_pitches=tuple(range(48, 85)), note_programs_per_pitch=8,
                           clip_seconds=6.0, note_seconds=1.0),
    # the benchmark: ~5,000 clips of 10 s
    "full": CorpusPreset("full", dance_per_class=160, essen_per_region=240, n_chorales=400, renders_per_piece=2,
                         chorale_renders=3, note_pitches=tuple(range(36, 97)), note_programs_per_pitch=12,
                         clip_seconds=10.0, note_seconds=2.0),
}


def get_preset(preset: str | CorpusPreset) -> CorpusPreset:
    if isinstance(preset, CorpusPreset):
        return preset
    if preset not in PRESETS:
        raise ConfigError(f"corpus preset={preset!r}, expected one of {sorted(PRESETS)}")
    return PRESETS[preset]


# -- planning ---------------------------------------------------------------------------------

def _pick(refs: list[sc.PieceRef], n: int, rng: np.random.Generator, used_groups: set[str]) -> list[sc.PieceRef]:
    """``n`` refs with distinct, not yet used groups, in a seeded random order."""
    out: list[sc.PieceRef] = []
    if n <= 0:
        return out
    for i in rng.permutation(len(refs)):
        r = refs[int(i)]
        if r.group in used_groups:
            continue
        used_groups.add(r.group)
        out.append(r)
        if len(out) == n:
            break
    return out


def _assign_splits(classes: dict[str, list[str]], preset: CorpusPreset, rng: np.random.Generator,
                   split_of: dict[str, str]) -> None:
    """Groups -> split, stratified per class so every class with >= 3 groups is in every split.

    Chorales get at least two per held-out split (when there are >= 6) so each split can hold a
    complementary pair of part subsets: every tag both present and absent.
    """
    for cls in sorted(classes):
        groups = [g for g in classes[cls] if g not in split_of]
        groups = [groups[int(i)] for i in rng.permutation(len(groups))]
        n = len(groups)
        least = 2 if cls == "chorale" and n >= 6 else 1
        n_test = max(least, int(round(n * preset.test_fraction))) if n >= 3 else 0
        n_valid = max(least, int(round(n * preset.valid_fraction))) if n >= 3 else 0
        for i, g in enumerate(groups):
            split_of[g] = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"


def _slug(text: str) -> str:


    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "x"


def _piece_slug(ref: sc.PieceRef) -> str:
    """Short readable id: "oneills1850-0101-0200-12", "bach-bwv66.6"; user files add a hash."""

    p = Path(ref.path)
    slug = _slug(f"{p.parent.name}-{p.stem}" + (f"-{ref.index}" if ref.index is not None else ""))
    if ref.family == "user":
        slug += "-" + hashlib.sha1(ref.piece_id.encode()).hexdigest()[:6]
    return slug


def plan_corpus(preset: str | CorpusPreset, *, seed: int = 0) -> list[dict[str, Any]]:
    """Every clip to render, as JSON-able specs; a pure function of (preset, seed)."""
    preset = get_preset(preset)
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    pieces: list[sc.PieceRef] = []
    classes: dict[str, list[str]] = {}
    dance = list(sc.list_dance_pieces())
    for cls in sc.DANCE_CLASSES:
        chosen = _pick([r for r in dance if r.dance == cls], preset.dance_per_class, rng, used)
        pieces += chosen
        classes[f"dance:{cls}"] = [r.group for r in chosen]
    essen = list(sc.list_essen_pieces())
    for cls in sc.STYLE_CLASSES:
        chosen = _pick([r for r in essen if r.style == cls], preset.essen_per_region, rng, used)
        pieces += chosen
        classes[f"style:{cls}"] = [r.group for r in chosen]
    chorales = _pick(list(sc.list_chorales()), preset.n_chorales, rng, used)
    pieces += chorales
    classes["chorale"] = [r.group for r in chorales]
    for path in preset.extra_abc:
        user = [r for r in sc.list_user_pieces(path) if r.group not in used]
        used.update(r.group for r in user)
        pieces += user
        classes.setdefault("user", []).extend(r.group for r in user)
    split_of: dict[str, str] = {}
    _assign_splits(classes, preset, rng, split_of)

    specs: list[dict[str, Any]] = []
    tune_count = {s: 0 for s in SPLITS}
    ens_count = {s: 0 for s in SPLITS}
    program_order = [MELODY_PROGRAMS[int(i)] for i in rng.permutation(len(MELODY_PROGRAMS))]
    subsets = [[r for j, r in enumerate(TAG_CLASSES) if m >> j & 1] for m in range(1, 16)]
    pair_masks = [m for m in range(1, 15) if m != 15 - m]  # complementary pairs: each tag on and off
    first_pair = {s: int(pair_masks[int(rng.integers(len(pair_masks)))]) for s in SPLITS}
    for ref in pieces:
        split = split_of.get(ref.group, "train")
        for r in range(preset.chorale_renders if ref.family == "chorale" else preset.renders_per_piece):
            base = {
                "piece": ref.piece_id, "group": ref.group, "family": ref.family, "split": split,
                "tempo_bpm": int(rng.integers(preset.tempo_range[0], preset.tempo_range[1] + 1)),
                "transpose": int(rng.integers(preset.transpose_range[0], preset.transpose_range[1] + 1)),
                "seed": int(rng.integers(0, 2**31 - 1)),
                "clip_seconds": preset.clip_seconds,
                "ref": dataclasses.asdict(ref),
            }
            if ref.family == "chorale":
                k = ens_count[split]
                ens_count[split] += 1
                if k < 2:  # each split starts with a complementary pair: every tag both on and off
                    mask = first_pair[split] if k == 0 else 15 - first_pair[split]
                    roles = [t for j, t in enumerate(TAG_CLASSES) if mask >> j & 1]
                else:
                    roles = subsets[int(rng.integers(len(subsets)))]
                programs = {role: int(rng.choice(ENSEMBLE_PROGRAMS[role])) for role in roles if role != "drums"}
                specs.append({**base, "kind": "ensemble", "roles": roles, "programs": programs,
                              "clip_id": f"ens-{_piece_slug(ref)}-r{r}"})
            else:
                program = program_order[tune_count[split] % len(program_order)]
                tune_count[split] += 1
                specs.append({**base, "kind": "tune", "roles": ["melody"], "programs": {"melody": program},
                              "clip_id": f"tune-{_piece_slug(ref)}-r{r}"})
    # single notes: for each pitch, a disjoint set of programs per split (group = program x pitch)
    n_prog = min(preset.note_programs_per_pitch, len(MELODY_PROGRAMS))
    for pitch in preset.note_pitches:
        progs = [MELODY_PROGRAMS[int(i)] for i in rng.permutation(len(MELODY_PROGRAMS))[:n_prog]]
        n_test = max(1, int(round(n_prog * preset.test_fraction))) if n_prog >= 3 else 0
        n_valid = max(1, int(round(n_prog * preset.valid_fraction))) if n_prog >= 3 else 0
        for i, prog in enumerate(progs):
            split = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
            specs.append({"kind": "note", "clip_id": f"note-p{prog:03d}-m{pitch:03d}", "piece": None,
                          "group": f"note:{prog}:{pitch}", "family": "note", "split": split, "pitch": int(pitch),
                          "programs": {"melody": int(prog)}, "roles": ["melody"],
                          "velocity": int(rng.choice([64, 96, 127])), "note_seconds": preset.note_seconds,
                          "seed": int(rng.integers(0, 2**31 - 1))})
    ids = [s["clip_id"] for s in specs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DataError(f"corpus plan: clip ids {dup} are not unique (two pieces map to the same name)")
    return specs


# -- performing one piece ---------------------------------------------------------------------

def _excerpt(notes, *, start_ql: float, seconds_per_ql: float, clip_seconds: float, transpose: int,
             velocity: int, rng: np.random.Generator, beat_ql: float):

    out = []
    for onset, dur, pitch in notes:
        t = (onset - start_ql) * seconds_per_ql
        if t < 0 or t >= clip_seconds:
            continue
        d = min(dur * seconds_per_ql * 0.92, clip_seconds - t)  # slight detaché between notes
        on_beat = abs((onset / beat_ql) - round(onset / beat_ql)) < 1e-6
        v = int(np.clip(velocity + (10 if on_beat else 0) + rng.integers(-6, 7), 1, 127))
        p = pitch + transpose
        if d > 0.01 and 0 <= p <= 127:
            out.append(Note(round(t, 6), round(d, 6), int(p), v))
    return out


def _fit_transpose(notes, transpose: int, *, low: int = 36, high: int = 96) -> int:
    """Move a transposition by octaves until the part lies in a playable range (key unchanged)."""
    if not notes:
        return transpose
    lo, hi = min(n[2] for n in notes), max(n[2] for n in notes)
    t = transpose
    while hi + t > high and lo + t - 12 >= low - 12:
        t -= 12
    while lo + t < low and hi + t + 12 <= high + 12:
        t += 12
    return t


def _drum_track(piece: sc.Piece, *, start_ql: float, seconds_per_ql: float, clip_seconds: float, bar_ql: float):

    notes = []
    beat = piece.beat_ql
    n_beats = int(np.ceil(clip_seconds / (beat * seconds_per_ql)))
    beats_per_bar = max(1, int(round(bar_ql / beat)))
    for b in range(n_beats):
        t = b * beat * seconds_per_ql
        if t >= clip_seconds:
            break
        first = b % beats_per_bar == 0
        notes.append(Note(round(t, 6), 0.1, 36 if first or (beats_per_bar == 4 and b % 4 == 2) else 38, 110 if first else 90))
        notes.append(Note(round(t, 6), 0.05, 42, 70))
        half = t + beat * seconds_per_ql / 2
        if half < clip_seconds:
            notes.append(Note(round(half, 6), 0.05, 42, 50))
    return Track(0, notes, drums=True, gain=ROLE_GAIN["drums"])


def perform(spec: dict[str, Any], piece: sc.Piece | None):
    """Spec (+ parsed piece) -> (tracks, duration_s, labels). Pure given the spec's seed."""

    rng = np.random.default_rng(spec["seed"])
    if spec["kind"] == "note":
        prog = spec["programs"]["melody"]
        tr = Track(prog, [Note(0.05, spec["note_seconds"], spec["pitch"], spec["velocity"])])
        labels = {"pitch": spec["pitch"], "program": prog}
        return [tr], spec["note_seconds"] + 0.55, labels
    assert piece is not None
    qpm = float(spec["tempo_bpm"])
    spq = 60.0 / qpm
    melodic = [n for role in ("melody", "accompaniment", "bass") for n in piece.parts.get(role, [])]
    start = min(n[0] for n in melodic)
    length_s = (piece.length_ql - start) * spq
    clip_s = min(spec["clip_seconds"], length_s)
    if clip_s < 1.5:
        raise DataError(f"piece {piece.ref.piece_id}: only {length_s:.2f} s long at {qpm} BPM, expected >= 1.5 s")
    transpose = _fit_transpose(piece.parts["melody"], spec["transpose"])
    tracks = []
    for role in spec["roles"]:
        if role == "drums":
            bar_ql = _bar_ql(piece.time_signature)
            tracks.append(_drum_track(piece, start_ql=start, seconds_per_ql=spq, clip_seconds=clip_s, bar_ql=bar_ql))
            continue
        vel = {"melody": 92, "accompaniment": 72, "bass": 80}[role]
        notes = _excerpt(piece.parts[role], start_ql=start, seconds_per_ql=spq, clip_seconds=clip_s,
                         transpose=transpose, velocity=vel, rng=rng, beat_ql=piece.beat_ql)
        if not notes:
            raise DataError(f"piece {piece.ref.piece_id}: role {role!r} has no notes in the first {clip_s:.1f} s")
        tracks.append(Track(spec["programs"][role], notes, gain=ROLE_GAIN[role]))
    pitched = [r for r in spec["roles"] if r != "drums"]
    key = None
    if piece.key is not None and ("accompaniment" in pitched or (spec["kind"] == "tune") or set(pitched) >= {"melody", "bass"}):
        key = sc.transpose_key(piece.key, transpose)
    labels = {"key": key, "tempo_bpm": qpm, "beat_bpm": round(qpm / piece.beat_ql, 3),
              "time_signature": piece.time_signature, "transpose": transpose,
              "key_original": piece.key, "key_rule": piece.key_rule, "key_analysed": piece.key_analysed}
    return tracks, clip_s + 0.5, labels


def _bar_ql(ts: str) -> float:
    try:
        num, den = ts.split("/")
        return 4.0 * int(num) / int(den)
    except (ValueError, ZeroDivisionError):
        return 4.0


def clip_row(spec: dict[str, Any], labels: dict[str, Any], duration: float, renderer: str) -> dict[str, Any]:
    ref = spec.get("ref") or {}
    programs = spec["programs"]
    row = {
        "clip_id": spec["clip_id"], "path": f"audio/{spec['kind']}/{spec['clip_id']}.wav",
        "piece": spec["piece"] or spec["group"], "group": spec["group"], "split": spec["split"],
        "duration": round(float(duration), 4), "kind": spec["kind"], "family": spec["family"],
        "source": ref.get("path"), "title": ref.get("title"),
        "dance": ref.get("dance"), "style": ref.get("style"),
        "key": labels.get("key"), "tempo_bpm": labels.get("tempo_bpm"), "beat_bpm": labels.get("beat_bpm"),
        "time_signature": labels.get("time_signature"), "transpose": labels.get("transpose"),
        "pitch": labels.get("pitch"),
        "program": None, "instrument": None,
        "parts": None,
        "programs": {role: {"program": p, "name": GM_NAMES.get(p, "")} for role, p in programs.items()},
        "key_original": labels.get("key_original"), "key_rule": labels.get("key_rule"),
        "key_analysed": labels.get("key_analysed"), "renderer": renderer, "seed": spec["seed"],
    }
    if spec["kind"] in ("tune", "note"):  # one instrument: the program is a label
        row["program"] = programs["melody"]
        row["instrument"] = program_label(programs["melody"])
    if spec["kind"] == "ensemble":
        row["parts"] = list(spec["roles"])
    if spec["kind"] == "note":
        row["pitch_name"] = pitch_name(spec["pitch"])
        row["velocity"] = spec["velocity"]
        row["note_seconds"] = spec["note_seconds"]
    return row


# -- workers ----------------------------------------------------------------------------------

