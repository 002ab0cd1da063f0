"""Note events -> audio: FluidSynth (a real General MIDI synthesizer) when present, numpy otherwise.

A performance is a list of :class:`Track` (one GM program each, or the drum channel) holding
:class:`Note` events in seconds. Renderers are registered by name ("fluidsynth", "numpy");
``get_renderer("auto")`` picks FluidSynth when pyfluidsynth, libfluidsynth and a soundfont are
all found, else the numpy fallback. Output is always mono float32 at 44.1 kHz, peak-normalised
to -1 dBFS so the two renderers give comparable levels.

FluidSynth is driven offline through ``pyfluidsynth`` (``Synth.get_samples``; no audio driver),
with reverb and chorus off: they are the only state a reused synth would carry from one clip to
the next, and turning them off keeps a clip's samples independent of what was rendered before it
(determinism, resumable builds, any number of workers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.io import file_sha1
from m3bert.core.registry import Registry
from m3bert.corpus.synth import synth_drum, synth_note

SAMPLE_RATE = 44100  # the paper's feature sample rate; every corpus clip is rendered at it
DRUM_CHANNEL = 9  # GM percussion channel (10 in 1-based numbering)
PEAK = 10 ** (-1 / 20)  # -1 dBFS

# Where Debian/Ubuntu/Fedora/Arch/Homebrew put General MIDI soundfonts, best first.
SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM2-2.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/local/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
)


@dataclass(frozen=True)
class Note:
    """One note: onset and held duration in seconds, MIDI pitch (or GM drum key), velocity 1-127."""

    start: float
    duration: float
    pitch: int
    velocity: int = 100


@dataclass
class Track:
    """The notes one instrument plays."""

    program: int  # General MIDI program 0-127 (ignored for drums)
    notes: list[Note] = field(default_factory=list)
    drums: bool = False  # True: GM percussion (channel 10), pitches are drum keys
    gain: float = 1.0  # linear mix gain


def validate_tracks(tracks: list[Track], *, duration: float) -> None:
    if duration <= 0 or not np.isfinite(duration):
        raise DataError(f"render: duration={duration!r} s, expected a positive number")
    if not tracks or not any(t.notes for t in tracks):
        raise DataError("render: no notes to render, expected at least one track with notes")
    for i, tr in enumerate(tracks):
        if not 0 <= tr.program <= 127:
            raise DataError(f"render: track {i} program={tr.program!r}, expected a GM program in [0, 127]")
        for n in tr.notes:
            if not (0 <= n.pitch <= 127 and 1 <= n.velocity <= 127 and n.start >= 0 and n.duration > 0):
                raise DataError(f"render: track {i} has an invalid note {n}, expected pitch 0-127, "
                                "velocity 1-127, start >= 0, duration > 0")


def _finish(mix: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(mix))) if mix.size else 0.0
    if not np.isfinite(peak) or peak <= 0:
        raise DataError(f"render produced {'non-finite' if not np.isfinite(peak) else 'silent'} audio")
    return (mix * (PEAK / peak)).astype(np.float32)


class Renderer:
    """Base class: ``render(tracks, duration=..., seed=...) -> float32 (n_samples,)`` at 44.1 kHz."""

    name = "base"
    sample_rate = SAMPLE_RATE

    def describe(self) -> dict:
        """Provenance recorded in the corpus metadata."""
        return {"renderer": self.name, "sample_rate": self.sample_rate}

    def render(self, tracks: list[Track], *, duration: float, seed: int = 0) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NumpyRenderer(Renderer):
    """The dependency-free fallback (see :mod:`m3bert.corpus.synth`)."""

    name = "numpy"

    def render(self, tracks: list[Track], *, duration: float, seed: int = 0) -> np.ndarray:

        validate_tracks(tracks, duration=duration)
        n = int(round(duration * self.sample_rate))
        mix = np.zeros(n)
        for ti, tr in enumerate(tracks):
            for ni, note in enumerate(tr.notes):
                s = int(round(note.start * self.sample_rate))
                if s >= n:
                    continue
                note_seed = (seed * 1_000_003 + ti * 100_003 + ni) % (2**32)  # noise differs per note, fixed per seed
                if tr.drums:
                    y = synth_drum(note.pitch, velocity=note.velocity, sample_rate=self.sample_rate, seed=note_seed)
                else:
                    y = synth_note(note.pitch, note.duration, program=tr.program, velocity=note.velocity,
                                   sample_rate=self.sample_rate, seed=note_seed)
                k = min(y.size, n - s)
                mix[s:s + k] += tr.gain * y[:k]
        return _finish(mix)


def _import_fluidsynth():
    """Import pyfluidsynth; return (module, None) or (None, reason)."""
    try:
        import fluidsynth  # optional dependency (the fluidsynth extra; loads libfluidsynth at import)
    except (ImportError, OSError) as exc:
        return None, f"pyfluidsynth/libfluidsynth not importable ({exc})"
    if not hasattr(fluidsynth, "Synth"):
        return None, "the 'fluidsynth' module found is not pyfluidsynth (no Synth class)"
    return fluidsynth, None


def _bind_write_float(mod):
    """ctypes binding of ``fluid_synth_write_float`` (pyfluidsynth only wraps the 16-bit writer)."""
    from ctypes import c_int, c_void_p  # optional: only to locate libfluidsynth

    fn = mod.cfunc("fluid_synth_write_float", c_int, ("synth", c_void_p, 1), ("len", c_int, 1),
                   ("lout", c_void_p, 1), ("loff", c_int, 1), ("lincr", c_int, 1),
                   ("rout", c_void_p, 1), ("roff", c_int, 1), ("rincr", c_int, 1))
    if fn is None:
        raise ConfigError("renderer 'fluidsynth': this libfluidsynth has no fluid_synth_write_float")
    return fn


def find_soundfont(explicit: str | os.PathLike | None = None) -> Path | None:
    """The soundfont to use: ``explicit``, else $M3BERT_SOUNDFONT, else the first usual system path."""
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"soundfont {p} does not exist; expected a .sf2/.sf3 file")
        return p
    env = os.environ.get("M3BERT_SOUNDFONT")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"M3BERT_SOUNDFONT={env} does not exist; expected a .sf2/.sf3 file")
        return p
    for cand in SOUNDFONT_PATHS:
        p = Path(cand)
        if p.is_file():
            return p.resolve()
    return None


def fluidsynth_status(soundfont: str | os.PathLike | None = None) -> tuple[bool, str]:
    """(usable, reason): whether the FluidSynth renderer can run here, and why not."""
    mod, reason = _import_fluidsynth()
    if mod is None:
        return False, reason
    sf = find_soundfont(soundfont)
    if sf is None:
        return False, f"no General MIDI soundfont found (looked in {', '.join(SOUNDFONT_PATHS)}; pass --soundfont)"
    return True, f"pyfluidsynth with {sf}"


class FluidSynthRenderer(Renderer):
    """General MIDI rendering with FluidSynth and a soundfont (sampled real instruments)."""

    name = "fluidsynth"

    def __init__(self, soundfont: str | os.PathLike | None = None) -> None:
        mod, reason = _import_fluidsynth()
        if mod is None:
            raise ConfigError(f"renderer 'fluidsynth' is not available: {reason}")
        sf = find_soundfont(soundfont)
        if sf is None:
            raise ConfigError("renderer 'fluidsynth': no General MIDI soundfont found; pass --soundfont PATH "
                              f"(looked in {', '.join(SOUNDFONT_PATHS)})")
        self._mod = mod
        self._write_float = _bind_write_float(mod)
        self.soundfont = Path(sf)
        self._sha1: str | None = None
        self._keeper = None

    def describe(self) -> dict:
        if self._sha1 is None:
            self._sha1 = file_sha1(self.soundfont)
        return {"renderer": self.name, "sample_rate": self.sample_rate, "soundfont": str(self.soundfont),
                "soundfont_sha1": self._sha1}

    def _new_synth(self):
        settings = {"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.cpu-cores": 1,
                    "synth.polyphony": 256}
        synth = self._mod.Synth(gain=0.5, samplerate=float(self.sample_rate), **settings)
        sfid = synth.sfload(str(self.soundfont))
        if sfid is None or sfid < 0:
            synth.delete()
            raise ConfigError(f"FluidSynth could not load soundfont {self.soundfont}")
        return synth, sfid

    def _open(self):
        """A fresh synth for one clip.

        A reused synth is not stateless even after a full reset (pooled voices start their
        amplitude ramp from the previous note's level), so each clip gets its own. A long-lived
        "keeper" synth holds the soundfont so FluidSynth's shared sample cache stays warm and a
        fresh synth costs tens of milliseconds, not a soundfont load.
        """
        if self._keeper is None:
            self._keeper = self._new_synth()[0]
        return self._new_synth()

    def render(self, tracks: list[Track], *, duration: float, seed: int = 0) -> np.ndarray:
        validate_tracks(tracks, duration=duration)
        synth, sfid = self._open()
        try:
            return self._render(synth, sfid, tracks, duration=duration)
        finally:
            synth.delete()

    def _render(self, synth, sfid, tracks: list[Track], *, duration: float) -> np.ndarray:
        n = int(round(duration * self.sample_rate))
        # channel per track (skipping the drum channel for pitched tracks)
        events: list[tuple[int, int, int, int, int]] = []  # (sample, order, channel, pitch, velocity); order 0 = off first
        pitched = [c for c in range(16) if c != DRUM_CHANNEL]
        if sum(not t.drums for t in tracks) > len(pitched):
            raise DataError(f"render: {len(tracks)} tracks, FluidSynth supports at most {len(pitched)} pitched tracks")
        chan_iter = iter(pitched)
        for tr in tracks:
            ch = DRUM_CHANNEL if tr.drums else next(chan_iter)
            if tr.drums:
                synth.program_select(ch, sfid, 128, 0)  # bank 128 = GM percussion kits
            else:
                synth.program_select(ch, sfid, 0, int(tr.program))
            synth.cc(ch, 7, int(np.clip(round(100 * tr.gain), 0, 127)))  # channel volume
            for note in tr.notes:
                s = int(round(note.start * self.sample_rate))
                e = int(round((note.start + note.duration) * self.sample_rate))
                if s >= n:
                    continue
                events.append((s, 1, ch, note.pitch, note.velocity))
                events.append((max(e, s + 1), 0, ch, note.pitch, 0))
        events.sort()
        chunks = []
        pos = 0
        for sample, order, ch, pitch, vel in events:
            sample = min(sample, n)
            if sample > pos:
                chunks.append(self._samples(synth, sample - pos))
                pos = sample
            if order == 1:
                synth.noteon(ch, pitch, vel)
            else:
                synth.noteoff(ch, pitch)
        if n > pos:
            chunks.append(self._samples(synth, n - pos))
        stereo = np.concatenate(chunks, axis=1).astype(np.float64)
        return _finish(stereo.mean(axis=0)[:n])

    def _samples(self, synth, n_frames: int) -> np.ndarray:
        """``(2, n_frames)`` float32. The float writer, not ``get_samples``: FluidSynth's 16-bit
        writer dithers with a running index, so the same clip would differ by its position."""
        left = np.zeros(n_frames, dtype=np.float32)
        right = np.zeros(n_frames, dtype=np.float32)
        self._write_float(synth.synth, n_frames, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
        return np.stack([left, right])

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.delete()
            self._keeper = None


RENDERERS = Registry("renderer")  # name -> factory(soundfont=None) -> Renderer
RENDERERS.add("numpy", lambda soundfont=None: NumpyRenderer())
RENDERERS.add("fluidsynth", lambda soundfont=None: FluidSynthRenderer(soundfont))


def available_renderers() -> list[str]:
    return sorted(RENDERERS)


def resolve_renderer_name(name: str, *, soundfont: str | os.PathLike | None = None) -> str:
    """``"auto"`` -> "fluidsynth" when usable, else "numpy"; other names are checked and returned."""
    if name == "auto":
        ok, _ = fluidsynth_status(soundfont)
        return "fluidsynth" if ok else "numpy"
    if name not in RENDERERS:
        raise ConfigError(f"renderer={name!r}, expected 'auto' or one of {available_renderers()}")
    return name


def get_renderer(name: str = "auto", *, soundfont: str | os.PathLike | None = None) -> Renderer:
    """A renderer by name ("auto", "fluidsynth", "numpy")."""
    return RENDERERS[resolve_renderer_name(name, soundfont=soundfont)](soundfont=soundfont)
