"""Built-in corpus: labels, splits by piece, rendering checks, determinism, resume, bad scores."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from m3bert.tasks.registry import SPLITS, load_task
from m3bert.corpus import scores as sc
from m3bert.corpus import CorpusPreset, build_corpus, corpus_info, plan_corpus, read_metadata
from m3bert.corpus.layout import MELODY_PROGRAMS
from m3bert.corpus.render import Note, Track, get_renderer
from m3bert.corpus.layout import TASK_LABELS
from m3bert.app.cli import main
from m3bert.core.errors import DataError


def _rows(root):
    return read_metadata(root)


def test_every_task_has_clips_in_every_split(tiny_corpus):
    for task in TASK_LABELS:
        data = load_task(f"{task}:{tiny_corpus}")  # validate(): label types, ranges, group hygiene
        for split in SPLITS:
            assert data.split(split), f"{task} has no {split} clips"
        if data.label_type == "multilabel":  # every tag both on and off in every split
            for split in SPLITS:
                m = data.target_matrix(data.split(split))
                assert (m.max(0) == 1).all() and (m.min(0) == 0).all(), (task, split, m)
    info = corpus_info(tiny_corpus)
    assert info["n_failed"] == 0 and info["n_clips"] == len(_rows(tiny_corpus))
    assert info["renderer"] in ("numpy", "fluidsynth")


def test_splits_are_by_piece(tiny_corpus):
    rows = _rows(tiny_corpus)
    split_of_group, split_of_title = {}, {}
    for r in rows:
        assert split_of_group.setdefault(r["group"], r["split"]) == r["split"]
        if r["title"]:  # the same composition under another book's id would share a normalised title
            key = (r["family"], sc.normalise_title(r["title"]))
            assert split_of_title.setdefault(key, r["split"]) == r["split"], key
    listed = {s: (tiny_corpus / "splits" / f"{s}.txt").read_text().split() for s in SPLITS}
    assert sorted(sum(listed.values(), [])) == sorted(r["path"] for r in rows)
    assert all((tiny_corpus / p).is_file() for p in sum(listed.values(), []))


def test_key_names_and_transposition():
    assert sc.transpose_key("D major", 3) == "F major"
    assert sc.transpose_key("B minor", -2) == "A minor"
    assert sc.transpose_key("E minor", 1) == "F minor"
    assert sc.transpose_key("F# minor", 6) == "C minor"
    assert sc.transpose_key("Bb major", 2) == "C major"
    assert len(set(sc.KEY_CLASSES)) == 24
    for name in sc.KEY_CLASSES:
        assert sc.transpose_key(sc.transpose_key(name, 5), -5) == name
    with pytest.raises(DataError):
        sc.parse_key_name("H dorian")


def test_transposed_key_label_in_corpus(tiny_corpus):
    keyed = [r for r in _rows(tiny_corpus) if r["key"] is not None]
    assert keyed and any(r["transpose"] % 12 for r in keyed)
    for r in keyed:
        pc0, mode0 = sc.parse_key_name(r["key_original"])
        pc, mode = sc.parse_key_name(r["key"])
        assert mode == mode0 and pc == (pc0 + r["transpose"]) % 12, r


def _abc_piece(tmp_path, body, k):
    path = tmp_path / "t.abc"
    path.write_text(f"X:1\nT:Test\nM:4/4\nL:1/8\nK:{k}\n{body}\n")
    return sc.load_piece(sc.list_user_pieces(path)[0])


def test_key_rule_on_hand_written_tunes(tmp_path):
    e_minor = "EFGA B2AG | FGAB e2dB | AGFE DEFD | E2B2 E4 |]"
    assert _abc_piece(tmp_path, e_minor, "Em").key == "E minor"  # explicit mode
    p = _abc_piece(tmp_path, e_minor, "G")  # signature only: mode from the profiles + final note
    assert p.key == "E minor" and p.key_rule.startswith("signature")
    assert _abc_piece(tmp_path, e_minor, "Edor").key is None  # modal: no label
    assert _abc_piece(tmp_path, "GABc d2BG | ABcd e2dB | cBAG FGAB | c2G2 D4 |]", "G").key is None  # ends off the tonic
    g_major = "GABc d2BG | ABcd e2dB | cBAG FGAB | d2B2 G4 |]"
    assert _abc_piece(tmp_path, g_major, "G").key == "G major"


def test_recorded_settings_reproduce_the_audio(tiny_corpus):
    """A note clip's recorded program/pitch/velocity/seed/renderer regenerate its WAV exactly."""
    info = corpus_info(tiny_corpus)
    rend = get_renderer(info["renderer"], soundfont=info.get("soundfont"))
    notes = [r for r in _rows(tiny_corpus) if r["kind"] == "note"][:3]
    for r in notes:
        assert r["program"] in MELODY_PROGRAMS and r["programs"]["melody"]["program"] == r["program"]
        audio = rend.render([Track(r["program"], [Note(0.05, r["note_seconds"], r["pitch"], r["velocity"])])],
                            duration=r["duration"], seed=r["seed"])
        disk, rate = sf.read(tiny_corpus / r["path"], dtype="float32")
        assert rate == 44100 and disk.shape == audio.shape
        assert np.max(np.abs(disk - audio)) <= 1.0 / 32767 + 1e-6
    tunes = [r for r in _rows(tiny_corpus) if r["kind"] == "tune"]
    assert {r["program"] for r in tunes} <= set(MELODY_PROGRAMS) and len({r["program"] for r in tunes}) >= 6
    for r in tunes:
        assert r["instrument"].startswith(f"{r['program']:03d} ")


def test_pitch_label_matches_f0(tiny_corpus):
    import librosa

    notes = [r for r in _rows(tiny_corpus) if r["kind"] == "note"]
    assert len(notes) >= 6
    for r in notes:
        y, rate = sf.read(tiny_corpus / r["path"], dtype="float32")
        y = y[int(0.1 * rate): int(0.9 * rate)]
        f0 = librosa.yin(y, fmin=50, fmax=2500, sr=rate, frame_length=4096)
        cents = 1200 * np.log2(np.median(f0) / librosa.midi_to_hz(r["pitch"]))
        assert abs(cents) < 50, (r["clip_id"], r["programs"], float(np.median(f0)), r["pitch"])


def test_tempo_estimate_near_label(tiny_corpus):
    """librosa's tempo of ensemble clips with drums (drums on every beat) matches the label; the
    beat level is ambiguous (half/double) so octave errors are accepted, nothing else."""
    import librosa

    rows = [r for r in _rows(tiny_corpus) if r["kind"] == "ensemble" and "drums" in r["parts"]]
    assert rows
    for r in rows:
        y, rate = sf.read(tiny_corpus / r["path"], dtype="float32")
        env = librosa.onset.onset_strength(y=y, sr=rate)
        est = float(librosa.feature.tempo(onset_envelope=env, sr=rate)[0])
        ratios = [est / (r["beat_bpm"] * f) for f in (0.5, 1.0, 2.0)]
        assert min(abs(np.log2(x)) for x in ratios) < np.log2(1.06), (r["clip_id"], est, r["beat_bpm"])


def test_plan_is_deterministic_and_seeded():
    a, b, c = plan_corpus("tiny", seed=0), plan_corpus("tiny", seed=0), plan_corpus("tiny", seed=1)
    assert a == b and a != c
    assert len({s["clip_id"] for s in a}) == len(a)


def test_resume_after_interruption(tiny_corpus, tmp_path):
    info = corpus_info(tiny_corpus)
    work = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, work)
    rows = _rows(tiny_corpus)
    # simulate a crash: some WAVs missing, a torn journal line, no final metadata yet
    lost = [rows[i] for i in (1, len(rows) // 2, len(rows) - 1)]
    for r in lost:
        (work / r["path"]).unlink()
    with open(work / ".build" / "journal.jsonl", "a") as fh:
        fh.write('{"row": {"clip_id": "half-writ')
    (work / "metadata.jsonl").unlink()
    (work / "corpus.json").unlink()
    summary = build_corpus("tiny", work, seed=0, renderer=info["renderer"], progress=False, soundfont=info.get("soundfont"))
    assert summary["n_rendered_this_run"] == len(lost) and summary["n_resumed"] == len(rows) - len(lost)
    assert (work / "metadata.jsonl").read_text() == (tiny_corpus / "metadata.jsonl").read_text()
    for r in lost:  # re-rendered bytes equal the first build: deterministic for seed and renderer
        assert (work / r["path"]).read_bytes() == (tiny_corpus / r["path"]).read_bytes()
    assert not list(work.rglob("*.tmp*"))
    with pytest.raises(DataError, match="different settings"):
        build_corpus("tiny", work, seed=1, renderer=info["renderer"], progress=False)


def test_bad_score_is_skipped_and_counted(tmp_path):
    abc = tmp_path / "mine.abc"
    good = "X:{n}\nT:Tune {n}\nR:reel\nM:4/4\nL:1/8\nK:G\nGABc d2BG|ABcd e2dB|cBAG FGAB|d2B2 G4|]\n\n"
    abc.write_text(good.format(n=1) + good.format(n=2) + "X:3\nT:Broken\nM:4/4\nK:G\n|]\n\n" + good.format(n=4))
    preset = CorpusPreset("test", dance_per_class=0, essen_per_region=0, n_chorales=0, renders_per_piece=1,
                          chorale_renders=1, note_pitches=(), note_programs_per_pitch=0, clip_seconds=2.0, note_seconds=0.5,
                          extra_abc=(str(abc),))
    summary = build_corpus(preset, tmp_path / "c", seed=0, renderer="numpy", progress=False)
    assert summary["n_planned"] == 4 and summary["n_clips"] == 3 and summary["n_failed"] == 1
    assert summary["failed_pieces"] == [f"{abc.resolve()}#2"] and "notes" in summary["failures"][0]["error"]
    rows = _rows(tmp_path / "c")
    assert {r["title"] for r in rows} == {"Tune 1", "Tune 2", "Tune 4"} and all(r["dance"] == "reel" for r in rows)
    assert json.loads((tmp_path / "c" / "corpus.json").read_text())["n_failed"] == 1


def test_numpy_timbres_are_distinct():
    """The fallback gives each melody program its own timbre: a 1-nearest-neighbour on MFCC
    statistics trained on some pitches names the program of other, unseen pitches."""
    import librosa

    rend = get_renderer("numpy")

    def feats(prog, pitch):
        y = rend.render([Track(prog, [Note(0.0, 0.8, pitch, 100)])], duration=1.0, seed=pitch)
        m = librosa.feature.mfcc(y=y, sr=44100, n_mfcc=20, n_fft=2048, hop_length=512)[1:]
        return np.concatenate([m.mean(1), m.std(1)])

    train_pitches, test_pitches = range(48, 76, 4), (54, 62, 70)
    x_train = np.asarray([feats(p, k) for p in MELODY_PROGRAMS for k in train_pitches])
    y_train = np.repeat(MELODY_PROGRAMS, len(train_pitches))
    scale = x_train.std(0) + 1e-6
    hits = 0
    for p in MELODY_PROGRAMS:
        for k in test_pitches:
            d = np.linalg.norm((x_train - feats(p, k)) / scale, axis=1)
            hits += int(y_train[int(np.argmin(d))] == p)
    assert hits / (len(test_pitches) * len(MELODY_PROGRAMS)) >= 0.75, hits  # chance: 1/12


def test_cli_info(tiny_corpus, capsys):
    from m3bert.app.cli import main

    assert main(["corpus", "info", str(tiny_corpus)]) == 0
    out = capsys.readouterr().out
    assert "builtin-key" in out and "clips" in out
    assert main(["corpus", "info", str(tiny_corpus / "nope")]) == 1


def test_malformed_metadata_is_one_error_line(tiny_corpus, tmp_path, capsys):
    """Corpus metadata with a string where a number is expected crashed deep in a loader (issue 12, item 8)."""
    bad = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, bad)
    lines = (bad / "metadata.jsonl").read_text().splitlines()
    row = next(i for i, ln in enumerate(lines) if '"tempo_bpm": 1' in ln)
    lines[row] = re.sub(r'"tempo_bpm": [0-9.]+', '"tempo_bpm": "fast"', lines[row])
    (bad / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"metadata.jsonl:{row + 1}: field 'tempo_bpm' = 'fast'; expected int or float"):
        read_metadata(bad)
    assert main(["bench", "--baseline", "chance", "--task", f"builtin-tempo:{bad}", "--report", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "tempo_bpm" in err and "Traceback" not in err
