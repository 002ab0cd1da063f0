"""Pure-numpy fallback synthesizer: General MIDI programs -> a few physically distinct timbres.

Why it exists: the built-in corpus must build on a machine with no system packages (no
libfluidsynth, no soundfont). The point is not realism but *distinguishable, stable* timbres so
that the instrument task stays learnable: bowed strings (sawtooth-like spectrum, slow attack,
delayed vibrato), brass (brightness grows with loudness), single reed (odd harmonics),
double reed (formant around harmonics 3-5), flute (few harmonics + breath noise), organ
(drawbars, no decay), accordion (two detuned reeds that beat), struck piano (inharmonic
decaying partials), Karplus-Strong plucked strings (guitar, harpsichord, bass), vibraphone
(1:4:10 bar partials with tremolo), synth leads/pads, and noise-burst drums.

Every function is pure: same inputs (and ``seed``) -> same samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

from m3bert.core.errors import ConfigError

MAX_PARTIAL_HZ = 12000.0  # keep additive partials well below Nyquist at 44.1 kHz


@dataclass(frozen=True)
class Voice:
    """How one General MIDI program is synthesised."""

    kind: str  # "additive" | "brass" | "struck" | "pluck" | "bell" | "accordion"
    tilt: float = 1.0  # partial k has amplitude k**-tilt (before odd/even/formant shaping)
    even_gain: float = 1.0  # multiplier on even harmonics (clarinet ~0.05)
    formant: float = 0.0  # >0: boost harmonics near this index (oboe ~4)
    n_partials: int = 16  # upper bound on partials (also limited by MAX_PARTIAL_HZ)
    attack: float = 0.01  # seconds
    decay: float = 0.1  # seconds from peak to sustain level
    sustain: float = 0.8  # sustain level (0..1)
    release: float = 0.08  # seconds after note off
    vibrato_hz: float = 0.0  # vibrato rate
    vibrato_depth: float = 0.0  # relative frequency deviation (0.004 ~ 7 cents)
    vibrato_delay: float = 0.15  # seconds before vibrato fades in
    tremolo_hz: float = 0.0  # amplitude modulation rate (vibraphone motor, organ)
    tremolo_depth: float = 0.0  # 0..1
    noise: float = 0.0  # breath / bow noise level relative to the tone
    brightness: float = 0.5  # pluck: 0 dark (nylon) .. 1 bright (harpsichord)
    decay_time: float = 1.5  # struck/pluck/bell: time for the fundamental to fall 60 dB
    only_partials: tuple[int, ...] = ()  # if set, only these harmonics sound (organ ranks: octaves and fifths)
    detune_cents: float = 8.0  # accordion: tuning offset of the second reed


# One voice per GM family (program // 8), refined for the programs the corpus uses.
_FAMILY_VOICES: dict[int, Voice] = {
    0: Voice("struck", tilt=1.4, n_partials=18, release=0.15, decay_time=3.0),  # piano
    1: Voice("bell", release=0.3, decay_time=2.0, tremolo_hz=5.0, tremolo_depth=0.3),  # chromatic perc
    2: Voice("additive", tilt=0.7, n_partials=10, attack=0.006, decay=0.01, sustain=1.0, release=0.03,
             tremolo_hz=6.5, tremolo_depth=0.08),  # organ
    3: Voice("pluck", brightness=0.12, decay_time=4.0, release=0.1),  # guitar: soft nylon pluck, long ring
    4: Voice("pluck", brightness=0.2, decay_time=2.0, release=0.06),  # bass
    5: Voice("additive", tilt=1.0, attack=0.08, decay=0.1, sustain=0.9, release=0.12, vibrato_hz=5.5,
             vibrato_depth=0.004, noise=0.02),  # strings
    6: Voice("additive", tilt=1.1, attack=0.18, decay=0.2, sustain=0.9, release=0.25, vibrato_hz=5.0,
             vibrato_depth=0.003),  # ensemble
    7: Voice("brass", tilt=0.6, attack=0.07, decay=0.1, sustain=0.8, release=0.08, vibrato_hz=5.0,
             vibrato_depth=0.002),  # brass
    8: Voice("additive", tilt=0.5, formant=2.5, attack=0.02, decay=0.05, sustain=0.9, release=0.06,
             vibrato_hz=5.2, vibrato_depth=0.003, noise=0.06),  # reed (sax: loud low formant, breathy)
    9: Voice("additive", tilt=2.2, n_partials=6, attack=0.05, decay=0.05, sustain=0.9, release=0.08,
             vibrato_hz=5.0, vibrato_depth=0.004, noise=0.08),  # pipe (flute)
    10: Voice("additive", tilt=1.0, even_gain=0.0, attack=0.005, decay=0.05, sustain=0.8, release=0.04),  # synth lead (square)
    11: Voice("additive", tilt=1.0, attack=0.35, decay=0.3, sustain=0.8, release=0.4, vibrato_hz=0.7,
              vibrato_depth=0.002),  # synth pad
    12: Voice("additive", tilt=1.0, attack=0.35, decay=0.3, sustain=0.8, release=0.4),  # synth effects
    13: Voice("pluck", brightness=0.8, decay_time=1.2, release=0.05),  # ethnic (banjo, sitar...)
    14: Voice("bell", release=0.2, decay_time=1.0),  # percussive
    15: Voice("additive", tilt=0.5, attack=0.01, noise=0.5),  # sound effects
}

_PROGRAM_VOICES: dict[int, Voice] = {
    6: Voice("pluck", brightness=1.0, decay_time=1.2, release=0.03),  # harpsichord: bright, short
    11: Voice("bell", release=0.4, decay_time=2.5, tremolo_hz=5.5, tremolo_depth=0.35),  # vibraphone
    19: Voice("additive", tilt=0.3, n_partials=16, attack=0.03, decay=0.02, sustain=1.0, release=0.15,
              only_partials=(1, 2, 4, 6, 8, 12, 16)),  # church organ: octave and fifth ranks, no 3rd/5th/7th
    21: Voice("accordion", tilt=0.4, formant=6.0, attack=0.03, decay=0.05, sustain=0.9, release=0.05,
              detune_cents=14.0),  # accordion: nasal reeds beating fast
    42: Voice("additive", tilt=0.9, attack=0.1, decay=0.1, sustain=0.9, release=0.15, vibrato_hz=5.0,
              vibrato_depth=0.004, noise=0.03, formant=2.0),  # cello
    68: Voice("additive", tilt=0.6, formant=4.0, attack=0.03, decay=0.05, sustain=0.9, release=0.05,
              vibrato_hz=5.0, vibrato_depth=0.003, noise=0.01),  # oboe
    70: Voice("additive", tilt=0.7, formant=3.0, attack=0.04, decay=0.05, sustain=0.9, release=0.06),  # bassoon
    71: Voice("additive", tilt=1.0, even_gain=0.06, attack=0.03, decay=0.05, sustain=0.9, release=0.05,
              noise=0.01),  # clarinet
}


def voice_for_program(program: int) -> Voice:
    """The fallback timbre for a General MIDI program (0-127)."""
    if not 0 <= int(program) <= 127:
        raise ConfigError(f"GM program={program!r}, expected an integer in [0, 127]")
    return _PROGRAM_VOICES.get(int(program), _FAMILY_VOICES[int(program) // 8])


def midi_to_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def _adsr(n_total: int, n_on: int, voice: Voice, sample_rate: int) -> np.ndarray:
    """Attack-decay-sustain while held (``n_on`` samples), exponential-ish release after."""
    t = np.arange(n_total) / sample_rate
    a = max(voice.attack, 1e-3)
    env = np.where(t < a, t / a, voice.sustain + (1 - voice.sustain) * np.exp(-(t - a) / max(voice.decay, 1e-3)))
    if n_on < n_total:
        level = env[n_on - 1] if n_on > 0 else 0.0
        tr = (np.arange(n_total - n_on) + 1) / sample_rate
        env[n_on:] = level * np.exp(-tr * 6.9 / max(voice.release, 1e-3))
    return env.astype(np.float64)


def _partial_amps(voice: Voice, n: int) -> np.ndarray:
    k = np.arange(1, n + 1, dtype=np.float64)
    amps = k ** (-voice.tilt)
    amps[1::2] *= voice.even_gain
    if voice.only_partials:
        amps *= np.isin(k, voice.only_partials)
    if voice.formant > 0:
        amps *= 1.0 + 3.0 * np.exp(-0.5 * ((k - voice.formant) / 1.2) ** 2)
    return amps / np.abs(amps).sum()


def _phase(f0: float, n: int, voice: Voice, sample_rate: int) -> np.ndarray:
    """Instantaneous phase of the fundamental (radians), with delayed vibrato."""
    t = np.arange(n) / sample_rate
    freq = np.full(n, f0)
    if voice.vibrato_hz > 0 and voice.vibrato_depth > 0:
        fade = np.clip((t - voice.vibrato_delay) / 0.2, 0.0, 1.0)
        freq = f0 * (1.0 + voice.vibrato_depth * fade * np.sin(2 * np.pi * voice.vibrato_hz * t))
    return 2 * np.pi * np.cumsum(freq) / sample_rate


def _noise(n: int, rng: np.random.Generator, sample_rate: int, low: float, high: float) -> np.ndarray:
    sos = butter(2, [low, min(high, 0.45 * sample_rate)], btype="bandpass", fs=sample_rate, output="sos")
    return sosfilt(sos, rng.standard_normal(n))


def _additive(f0: float, n_total: int, n_on: int, voice: Voice, rng: np.random.Generator,
              sample_rate: int, *, brass: bool = False) -> np.ndarray:
    n_part = max(1, min(voice.n_partials, int(MAX_PARTIAL_HZ // f0)))
    amps = _partial_amps(voice, n_part)
    env = _adsr(n_total, n_on, voice, sample_rate)
    ph = _phase(f0, n_total, voice, sample_rate)
    out = np.zeros(n_total)
    for k in range(1, n_part + 1):
        if amps[k - 1] == 0:
            continue
        partial = amps[k - 1] * np.sin(k * ph + rng.uniform(0, 2 * np.pi))
        # brass: upper partials need more "blowing" -> spectrum brightens as the envelope rises
        out += partial * (env ** (1.0 + 0.35 * (k - 1)) if brass else env)
    if voice.tremolo_depth > 0:
        t = np.arange(n_total) / sample_rate
        out *= 1.0 - voice.tremolo_depth * 0.5 * (1 + np.sin(2 * np.pi * voice.tremolo_hz * t))
    if voice.noise > 0:
        out += voice.noise * env * _noise(n_total, rng, sample_rate, min(f0 * 2, 4000.0), 9000.0)
    return out


def _accordion(f0: float, n_total: int, n_on: int, voice: Voice, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    # two reeds tuned ~8 cents apart: the audible beating ("musette") is the accordion's signature
    detune = 2.0 ** (voice.detune_cents / 1200.0)
    return 0.5 * (_additive(f0, n_total, n_on, voice, rng, sample_rate)
                  + _additive(f0 * detune, n_total, n_on, voice, rng, sample_rate))


def _struck(f0: float, n_total: int, n_on: int, voice: Voice, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Piano-like: stiff-string inharmonic partials, each decaying faster the higher it is."""
    t = np.arange(n_total) / sample_rate
    b = 4e-4  # inharmonicity coefficient
    n_part = max(1, min(voice.n_partials, int(MAX_PARTIAL_HZ // f0)))
    out = np.zeros(n_total)
    for k in range(1, n_part + 1):
        fk = k * f0 * np.sqrt(1 + b * k * k)
        if fk > MAX_PARTIAL_HZ:
            break
        tau = voice.decay_time / 6.9 / (1 + 0.4 * (k - 1)) * (261.6 / f0) ** 0.3
        out += k ** (-voice.tilt) * np.exp(-t / tau) * np.sin(2 * np.pi * fk * t + rng.uniform(0, 2 * np.pi))
    hammer = _noise(min(n_total, int(0.01 * sample_rate)), rng, sample_rate, 1000.0, 8000.0)
    out[: hammer.size] += 0.05 * hammer * np.linspace(1, 0, hammer.size)
    return out * _damper(n_total, n_on, voice, sample_rate)


def _damper(n_total: int, n_on: int, voice: Voice, sample_rate: int) -> np.ndarray:
    env = np.ones(n_total)
    if n_on < n_total:
        env[n_on:] = np.exp(-(np.arange(n_total - n_on) + 1) / sample_rate * 6.9 / max(voice.release, 1e-3))
    return env


def _pluck(f0: float, n_total: int, n_on: int, voice: Voice, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Karplus-Strong: a noise burst circulating in a delay line with a two-tap lowpass."""
    period = sample_rate / f0
    delay = max(2, int(round(period)))
    # loss per round trip so the fundamental falls 60 dB in decay_time seconds
    g = 10 ** (-3.0 / (voice.decay_time * f0))
    burst = rng.uniform(-1, 1, delay)
    if voice.brightness < 1.0:  # darker excitation = softer pluck (nylon, bass)
        alpha = 0.1 + 0.9 * voice.brightness
        burst = lfilter([alpha], [1, -(1 - alpha)], burst)
    x = np.zeros(n_total)
    x[:delay] = burst
    a = np.zeros(delay + 2)
    a[0] = 1.0
    a[delay] -= 0.5 * g
    a[delay + 1] -= 0.5 * g
    y = lfilter([1.0], a, x)
    return y * _damper(n_total, n_on, voice, sample_rate)


def _bell(f0: float, n_total: int, n_on: int, voice: Voice, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Vibraphone/mallet bar: partials at 1, 4 and 10 times f0 with their own decays."""
    t = np.arange(n_total) / sample_rate
    out = np.zeros(n_total)
    for ratio, amp, tau_scale in ((1.0, 1.0, 1.0), (3.93, 0.35, 0.35), (9.97, 0.12, 0.15)):
        if ratio * f0 > MAX_PARTIAL_HZ:
            continue
        tau = voice.decay_time / 6.9 * tau_scale
        out += amp * np.exp(-t / tau) * np.sin(2 * np.pi * ratio * f0 * t + rng.uniform(0, 2 * np.pi))
    if voice.tremolo_depth > 0:
        out *= 1.0 - voice.tremolo_depth * 0.5 * (1 + np.sin(2 * np.pi * voice.tremolo_hz * t))
    return out * _damper(n_total, n_on, voice, sample_rate)


_KINDS = {
    "additive": _additive,
    "brass": lambda *a: _additive(*a, brass=True),
    "accordion": _accordion,
    "struck": _struck,
    "pluck": _pluck,
    "bell": _bell,
}


def synth_note(pitch: int, duration: float, *, program: int, velocity: int = 100, sample_rate: int = 44100,
               seed: int = 0) -> np.ndarray:
    """One note of a pitched GM program: float64 ``(n_samples,)``, held ``duration`` s plus release/ring."""
    voice = voice_for_program(program)
    rng = np.random.default_rng(seed)
    f0 = midi_to_hz(pitch)
    n_on = max(1, int(round(duration * sample_rate)))
    ring = voice.release if voice.kind in ("additive", "brass", "accordion") else max(voice.release, 0.05)
    n_total = n_on + int(round(ring * sample_rate))
    y = _KINDS[voice.kind](f0, n_total, n_on, voice, rng, sample_rate)
    return y * (velocity / 127.0) ** 1.5


def synth_drum(pitch: int, *, velocity: int = 100, sample_rate: int = 44100, seed: int = 0) -> np.ndarray:
    """One GM percussion hit (channel 10 key numbers): kick, snare, hi-hats, cymbals, toms."""
    rng = np.random.default_rng(seed)
    amp = (velocity / 127.0) ** 1.5
    if pitch in (35, 36):  # kick: sine sweeping down 150 -> 50 Hz
        n = int(0.35 * sample_rate)
        t = np.arange(n) / sample_rate
        f = 50 + 100 * np.exp(-t / 0.03)
        y = np.sin(2 * np.pi * np.cumsum(f) / sample_rate) * np.exp(-t / 0.09)
    elif pitch in (37, 38, 39, 40):  # snare / clap: noise burst + 190 Hz body
        n = int(0.25 * sample_rate)
        t = np.arange(n) / sample_rate
        y = 0.7 * _noise(n, rng, sample_rate, 1500, 9000) * np.exp(-t / 0.05) + 0.4 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.04)
    elif pitch in (42, 44, 46):  # hi-hats: short high noise (open: longer)
        n = int((0.3 if pitch == 46 else 0.08) * sample_rate)
        t = np.arange(n) / sample_rate
        y = 0.5 * _noise(n, rng, sample_rate, 7000, 16000) * np.exp(-t / (0.1 if pitch == 46 else 0.02))
    elif pitch in (49, 51, 52, 53, 55, 57, 59):  # cymbals
        n = int(1.2 * sample_rate)
        t = np.arange(n) / sample_rate
        y = 0.4 * _noise(n, rng, sample_rate, 4000, 16000) * np.exp(-t / 0.4)
    else:  # toms and everything else: pitched membrane
        n = int(0.4 * sample_rate)
        t = np.arange(n) / sample_rate
        f0 = 80 + 4 * (pitch - 40)
        y = np.sin(2 * np.pi * f0 * (1 + 0.3 * np.exp(-t / 0.05)) * t) * np.exp(-t / 0.12)
    return y * amp
