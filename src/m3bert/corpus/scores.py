"""Real compositions from music21's bundled corpus, with the labels the scores justify.

Three families of scores, each with labels read from the score itself:

* ``dance``  — O'Neill's *Music of Ireland* (1850 tunes) and Ryan's *Mammoth Collection*
  (1883): the ABC ``R:`` field gives the dance type (reel, jig, hornpipe, slip jig, strathspey).
* ``essen``  — the Essen folksong collection: the ABC ``O:`` (origin) field gives the region
  (China, Germany, Lorraine, Luxembourg, Ireland).
* ``chorale`` — Bach's four-part chorales (MusicXML): soprano = melody, alto + tenor =
  accompaniment, bass = bass; used for the multi-part instrument-presence tags.

Listing reads only the text headers (fast, no parsing), so a build can choose pieces
stratified by label; :func:`load_piece` parses one piece with music21 when it is rendered.

Key labels (24 classes, "D major" / "B minor"). The rule, applied identically to every family:

1. the *key signature* written in the score fixes two candidates: its major key and the
   relative minor;
2. an explicit mode in the score decides between them (ABC ``K:Em`` / ``K:Gmaj``; MusicXML
   ``<mode>``); a modal ``K:`` (dorian, mixolydian, ...) gives *no* key label;
3. otherwise key-profile correlation decides, restricted to the two candidates (music21's default
   key analysis: Aarden-Essen profiles on duration-weighted pitch classes; its unrestricted
   answer can name a key the signature contradicts);
4. the piece must end on the chosen tonic (last note of the bass, or of the tune): tonal folk
   tunes and chorales do; pieces that do not are modal or end on a half cadence and get no
   key label rather than a guessed one.

The unrestricted Aarden-Essen analysis is recorded next to the label (``key_analysed``) so users can
measure how often the two agree. Transposing a render by ``t`` semitones moves the tonic by
``t`` and keeps the mode (:func:`transpose_key`).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from m3bert.core.errors import DataError

# -- key vocabulary --------------------------------------------------------------------------

_MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
KEY_CLASSES: list[str] = [f"{n} major" for n in _MAJOR_NAMES] + [f"{n} minor" for n in _MINOR_NAMES]
_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def key_name(tonic_pc: int, mode: str) -> str:
    """Canonical class name of a key, e.g. ``key_name(2, "major") == "D major"``."""
    if mode not in ("major", "minor"):
        raise DataError(f"key mode={mode!r}, expected 'major' or 'minor'")
    names = _MAJOR_NAMES if mode == "major" else _MINOR_NAMES
    return f"{names[int(tonic_pc) % 12]} {mode}"


def parse_key_name(name: str) -> tuple[int, str]:
    """``"F# minor"`` -> (6, "minor"); accepts sharps/flats spelled '#'/'b'/'-'."""
    m = re.fullmatch(r"\s*([A-Ga-g])([#b\-]*)\s+(major|minor)\s*", name)
    if not m:
        raise DataError(f"key name {name!r}, expected e.g. 'D major' or 'B minor'")
    pc = _PC[m.group(1).upper()] + m.group(2).count("#") - m.group(2).count("b") - m.group(2).count("-")
    return pc % 12, m.group(3)


def transpose_key(name: str, semitones: int) -> str:
    """The key of a piece in ``name`` transposed by ``semitones``: tonic moves, mode stays."""
    pc, mode = parse_key_name(name)
    return key_name(pc + int(semitones), mode)


# -- label vocabularies ---------------------------------------------------------------------

DANCE_CLASSES = ["reel", "jig", "hornpipe", "slip jig", "strathspey"]
_DANCE_ALIASES = {"reel": "reel", "jig": "jig", "double jig": "jig", "single jig": "jig",
                  "hornpipe": "hornpipe", "slip jig": "slip jig", "slipjig": "slip jig",
                  "strathspey": "strathspey"}

STYLE_CLASSES = ["china", "germany", "lorraine", "luxembourg", "ireland"]
# Essen files whose O: field is a single region; mixed collections (ballads, DVA, tests) are left out
_ESSEN_FILES = {"han1": "china", "han2": "china", "altdeu10": "germany", "altdeu20": "germany",
                "boehme10": "germany", "boehme20": "germany", "erk5": "germany", "erk10": "germany",
                "erk20": "germany", "erk30": "germany", "fink0": "germany", "kinder0": "germany",
                "zuccal0": "germany", "lot": "lorraine", "lux": "luxembourg", "irl": "ireland"}
_REGION_FROM_ORIGIN = (("china", "china"), ("asien", "china"), ("irland", "ireland"),
                       ("luxemburg", "luxembourg"), ("lothringen", "lorraine"), ("deutschland", "germany"))

FAMILIES = ("dance", "essen", "chorale", "user")


@dataclass(frozen=True)
class PieceRef:
    """Where a piece lives and the labels readable from its header (no parsing needed)."""

    piece_id: str  # unique, e.g. "oneills1850/0101-0200.abc#12"
    family: str  # one of FAMILIES
    path: str  # music21-corpus-relative path ("bach/bwv66.6.mxl") or an absolute path (user files)
    index: int | None  # position of the tune inside a multi-tune ABC file (None: whole file)
    title: str
    group: str  # composition identity for splits (same tune in two books -> same group)
    dance: str | None = None
    style: str | None = None


@dataclass
class Piece:
    """A parsed piece: notes per role in quarter lengths, meter and key label."""

    ref: PieceRef
    parts: dict[str, list[tuple[float, float, int]]]  # role -> [(onset_ql, duration_ql, midi)], sorted
    time_signature: str  # e.g. "6/8"
    beat_ql: float  # the meter's beat in quarter lengths (6/8 -> 1.5)
    key: str | None  # KEY_CLASSES name, or None when the rule above gives no label
    key_rule: str  # which step decided (or why there is no label)
    key_analysed: str | None  # music21's unrestricted Krumhansl-Schmuckler answer
    length_ql: float = 0.0
    extra: dict = field(default_factory=dict)


def corpus_root() -> Path:
    import music21  # heavy import (~2 s), only when scores are read

    return Path(music21.__file__).parent / "corpus"


def _split_abc(text: str) -> list[str]:
    return [t for t in re.split(r"\n(?=X:)", "\n" + text) if t.strip().startswith("X:")]


def _field(tune: str, name: str) -> str | None:
    m = re.search(rf"^{name}:\s*(.*?)\s*$", tune, flags=re.M)
    return m.group(1) if m else None


def normalise_title(title: str) -> str:
    """Identity of a tune across books: lower case, no articles/dance words/punctuation."""
    t = title.lower().split(",")[0]
    t = re.sub(r"\b(the|a|an|der|die|das|reel|jig|hornpipe|strathspey|slip|double|single|no\.?\s*\d+)\b", " ", t)
    t = re.sub(r"[^a-z0-9]+", "", t)
    return t or re.sub(r"[^a-z0-9]+", "", title.lower()) or "untitled"


def _dance_of(r_field: str | None) -> str | None:
    if not r_field:
        return None
    return _DANCE_ALIASES.get(re.sub(r"\s+", " ", r_field.strip().lower()))


@lru_cache(maxsize=None)
def list_dance_pieces() -> tuple[PieceRef, ...]:
    """Every O'Neill's / Ryan's tune whose ``R:`` names one of DANCE_CLASSES (header scan only)."""
    root = corpus_root()
    refs = []
    for book in ("oneills1850", "ryansMammoth"):
        for f in sorted((root / book).glob("*.abc")):
            for i, tune in enumerate(_split_abc(f.read_text(encoding="utf-8", errors="replace"))):
                dance = _dance_of(_field(tune, "R"))
                if dance is None:
                    continue
                title = (_field(tune, "T") or f.stem).split("--")[0].strip()
                rel = f"{book}/{f.name}"
                refs.append(PieceRef(f"{rel}#{i}", "dance", rel, i, title, f"tune:{normalise_title(title)}", dance=dance))
    return tuple(refs)


@lru_cache(maxsize=None)
def list_essen_pieces() -> tuple[PieceRef, ...]:
    """Essen folksongs from single-region collections, region read from each song's ``O:``."""
    root = corpus_root() / "essenFolksong"
    refs = []
    for stem, file_region in sorted(_ESSEN_FILES.items()):
        f = root / f"{stem}.abc"
        if not f.is_file():
            continue
        for i, tune in enumerate(_split_abc(f.read_text(encoding="latin-1"))):
            origin = (_field(tune, "O") or "").lower()
            if ";" in origin or "/" in origin:  # songs of two regions: no single label
                continue
            region = next((r for key, r in _REGION_FROM_ORIGIN if key in origin), None)
            if region != file_region:
                continue
            title = (_field(tune, "T") or f"{stem} {i}").strip()
            rel = f"essenFolksong/{f.name}"
            refs.append(PieceRef(f"{rel}#{i}", "essen", rel, i, title, f"essen:{normalise_title(title)}", style=region))
    return tuple(refs)


@lru_cache(maxsize=None)
def list_chorales() -> tuple[PieceRef, ...]:
    """Bach chorales (one MusicXML file each; BWV variants of one chorale share a group)."""
    root = corpus_root() / "bach"
    refs = []
    for f in sorted(root.glob("bwv*.mxl")):
        m = re.match(r"bwv(\d+[a-z]?)(?:\.(\d+))?", f.stem)
        group = f"chorale:{m.group(1)}.{m.group(2)}" if m else f"chorale:{f.stem}"
        refs.append(PieceRef(f"bach/{f.name}", "chorale", f"bach/{f.name}", None, f.stem, group))
    return tuple(refs)


def list_user_pieces(path: str | Path) -> list[PieceRef]:
    """Tunes of a user ABC file: dance from ``R:``, region from ``O:`` when they map to a class."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"ABC file {p} does not exist")
    refs = []
    for i, tune in enumerate(_split_abc(p.read_text(encoding="utf-8", errors="replace"))):
        title = (_field(tune, "T") or f"{p.stem} {i}").strip()
        origin = (_field(tune, "O") or "").lower()
        region = next((r for key, r in _REGION_FROM_ORIGIN if key in origin), None)
        refs.append(PieceRef(f"{p.resolve()}#{i}", "user", str(p.resolve()), i, title,
                             f"user:{p.stem}:{normalise_title(title)}", dance=_dance_of(_field(tune, "R")), style=region))
    return refs


# -- parsing -----------------------------------------------------------------------------------

def _abc_text(ref: PieceRef) -> str:
    p = Path(ref.path)
    if not p.is_absolute():
        p = corpus_root() / ref.path
    enc = "latin-1" if ref.family == "essen" else "utf-8"
    tunes = _split_abc(p.read_text(encoding=enc, errors="replace"))
    if ref.index is None or not 0 <= ref.index < len(tunes):
        raise DataError(f"{p}: tune index {ref.index} not found ({len(tunes)} tunes in the file)")
    return tunes[ref.index]


def _explicit_abc_mode(tune: str) -> str | None:
    """Mode written in the ABC ``K:`` field: 'major', 'minor', 'modal', or None (signature only)."""
    k = (_field(tune, "K") or "").strip()
    m = re.match(r"^([A-Ga-g][#b]?)\s*([A-Za-z]*)", k)
    if not m:
        return None
    suffix = m.group(2).lower()
    if suffix in ("", "none"):
        return None
    if suffix in ("m", "min", "minor", "aeo", "aeolian"):
        return "minor"
    if suffix in ("maj", "major", "ion", "ionian"):
        return "major"
    if suffix[:3] in ("dor", "mix", "lyd", "phr", "loc"):
        return "modal"
    return None


def _notes_of(stream) -> list[tuple[float, float, int]]:
    out = []
    for el in stream.flatten().notes:
        onset = float(el.offset)
        dur = float(el.duration.quarterLength)
        if dur <= 0:  # grace notes: ornaments, not part of the rhythm
            continue
        for p in el.pitches:
            out.append((onset, dur, int(round(p.ps))))
    out.sort()
    return out


@lru_cache(maxsize=None)
def _profiles() -> tuple[np.ndarray, np.ndarray]:
    """music21's default key-finding profiles (Aarden-Essen), major and minor, tonic C."""
    from music21.analysis.discrete import AardenEssen  # heavy import (~2 s), only when scores are read

    ae = AardenEssen()
    return np.asarray(ae.getWeights("major"), float), np.asarray(ae.getWeights("minor"), float)


def key_correlations(notes: list[tuple[float, float, int]]) -> np.ndarray:
    """``(2, 12)`` Pearson correlations of the duration-weighted pitch-class histogram with the
    Aarden-Essen profiles rotated to every tonic (row 0 major, row 1 minor).

    The same computation as music21's ``score.analyze('key')`` (``AardenEssen``), done on the
    extracted notes because music21's version costs ~0.1 s per piece.
    """
    hist = np.zeros(12)
    for _, dur, pitch in notes:
        hist[pitch % 12] += dur
    out = np.zeros((2, 12))
    if hist.std() == 0:
        return out
    for m, prof in enumerate(_profiles()):
        for tonic in range(12):
            out[m, tonic] = np.corrcoef(hist, np.roll(prof, tonic))[0, 1]
    return out


def _key_label(notes, sharps: int | None, explicit_mode: str | None, final_pitch: int | None) -> tuple[str | None, str, str | None]:
    """(label, rule, unrestricted analysis) by the module docstring's rule."""
    corr = key_correlations(notes)
    m, tonic_best = np.unravel_index(int(np.argmax(corr)), corr.shape)
    analysed = key_name(int(tonic_best), ("major", "minor")[int(m)]) if corr.any() else None
    if sharps is None:
        return None, "no key signature", analysed
    if explicit_mode == "modal":
        return None, "modal key (not major/minor)", analysed
    major_pc, minor_pc = (7 * sharps) % 12, (7 * sharps + 9) % 12
    if explicit_mode in ("major", "minor"):
        mode, rule = explicit_mode, "explicit mode"
    else:
        mode = "major" if corr[0, major_pc] >= corr[1, minor_pc] else "minor"
        rule = "signature + Aarden-Essen mode"
    tonic = major_pc if mode == "major" else minor_pc
    if final_pitch is None or final_pitch % 12 != tonic:
        return None, f"does not end on the tonic of {key_name(tonic, mode)}", analysed
    return key_name(tonic, mode), rule, analysed


def _first_signature(score) -> tuple[int | None, str | None]:
    from music21 import key as m21key  # heavy import (~2 s), only when scores are read

    for ks in score.recurse().getElementsByClass(m21key.KeySignature):
        mode = getattr(ks, "mode", None) if isinstance(ks, m21key.Key) else None
        return int(ks.sharps), mode
    return None, None


@contextlib.contextmanager
def _no_beaming():
    """music21's ABC reader beams every part (notation only, ~40 % of the parse time): skip it."""
    from music21 import stream  # heavy import (~2 s), only when scores are read

    original = stream.Stream.makeBeams
    stream.Stream.makeBeams = lambda self, *a, **k: None if k.get("inPlace") else self
    try:
        yield
    finally:
        stream.Stream.makeBeams = original


def load_piece(ref: PieceRef) -> Piece:
    """Parse one piece with music21; ``DataError`` naming the piece when it cannot be used."""
    import music21  # heavy import (~2 s), only when scores are read
    from music21 import converter, meter  # heavy import (~2 s), only when scores are read

    try:
        if ref.family == "chorale":
            score = music21.corpus.parse(ref.path)
            explicit = None
            _, xml_mode = _first_signature(score)
            if xml_mode in ("major", "minor"):
                explicit = xml_mode
        else:
            text = _abc_text(ref)
            with _no_beaming():
                score = converter.parseData(text, format="abc")
            explicit = _explicit_abc_mode(text)
    except DataError:
        raise
    except Exception as exc:  # music21 raises many types on malformed input
        raise DataError(f"piece {ref.piece_id}: music21 could not parse it ({type(exc).__name__}: {exc})") from exc
    score.stripTies(inPlace=True)
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    if ref.family == "chorale":
        if len(parts) != 4:  # some files add an instrumental part: keep the four voices by name
            # names like "Soprano\rOboe 1,2\rViolin 1": the voice is the first line
            by_name = {re.split(r"[\r\n]", (p.partName or "").strip().lower())[0].strip(): p for p in parts}
            voices = [by_name.get(n) for n in ("soprano", "alto", "tenor", "bass")]
            if any(v is None for v in voices):
                raise DataError(f"piece {ref.piece_id}: {len(parts)} parts {sorted(by_name)}, expected SATB")
            parts = voices
        roles = {"melody": _notes_of(parts[0]), "accompaniment": sorted(_notes_of(parts[1]) + _notes_of(parts[2])),
                 "bass": _notes_of(parts[3])}
        final_from = roles["bass"]
    else:
        roles = {"melody": _notes_of(parts[0])}
        final_from = roles["melody"]
    if not roles["melody"] or len(roles["melody"]) < 4:
        raise DataError(f"piece {ref.piece_id}: {len(roles['melody'])} notes in the melody, expected at least 4")
    ts = next(iter(score.recurse().getElementsByClass(meter.TimeSignature)), None)
    ts_name = ts.ratioString if ts is not None else "4/4"
    beat_ql = float(ts.beatDuration.quarterLength) if ts is not None else 1.0
    sharps, _ = _first_signature(score)
    final_pitch = None
    if final_from:  # the lowest of the notes sounding last (one note for a tune, the bass for a chorale)
        end = max(n[0] + n[1] for n in final_from)
        final_pitch = min(n[2] for n in final_from if abs(n[0] + n[1] - end) < 1e-6)
    key, rule, analysed = _key_label([n for notes in roles.values() for n in notes], sharps, explicit, final_pitch)
    length = max(n[0] + n[1] for notes in roles.values() for n in notes)
    return Piece(ref, roles, ts_name, beat_ql, key, rule, analysed, length_ql=length)
