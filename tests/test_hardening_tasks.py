"""Issue 12 on the task / benchmark side: audio leaking across splits (6a), label paths leaving the
dataset root (9), and ``m3bert bench`` argument errors (8). Each test reproduces the failure first."""

from __future__ import annotations

import json

import pytest

from dataset_fixtures import (
    make_emomusic,
    make_mtg_jamendo,
    make_mtt,
    make_nsynth,
    make_rwc,
    mtg_path,
    write_audio,
)
from m3bert.app.cli import main
from m3bert.core.errors import ConfigError, DataError
from m3bert.evaluate.runner import run_benchmark
from m3bert.tasks.datasets._common import label_path
from m3bert.tasks.datasets.emomusic import load_emomusic_va
from m3bert.tasks.datasets.mtg_jamendo import load_mtg
from m3bert.tasks.datasets.mtt import load_mtt_top50
from m3bert.tasks.datasets.nsynth import load_nsynth
from m3bert.tasks.datasets.rwc import load_rwc_instrument
from m3bert.tasks.registry import Clip, Task, TaskData
from test_bench_runner import FAST, FakeRep


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


# ---------------------------------------------------------------------------------------------
# 6a: the same audio in two splits, duplicate clip ids


def _songs(tmp_path, n=40):
    """``n`` tiny files, clip ``clip-i`` of file ``i``, class ``i % 2``, split 3/1/1 by file."""
    clips = []
    for i in range(n):
        path = write_audio(tmp_path / "audio" / f"{i}.wav")
        clips.append(Clip(f"clip-{i}", path, i % 2, ["train", "train", "train", "valid", "test"][i % 5], f"song{i}"))
    return clips


def _task(clips, name="leaky"):
    data = TaskData(name, "multiclass", ["a", "b"], clips)
    return Task(name, "multiclass", "high-level", ["accuracy"], loader=lambda root, **kw: data), data


def test_benchmark_refuses_a_task_whose_test_clips_are_train_audio_under_other_ids(tmp_path):
    """Before: test clips that are train clips under another clip id and group were accepted, and the
    probe scored 0.87 instead of 0.27, exit 0. Now validate() names both clips."""
    clips = _songs(tmp_path)
    train = [c for c in clips if c.split == "train"]
    leak = [Clip(f"copy-{k}", c.path, c.target, "test", f"other-group-{k}") for k, c in enumerate(train[:5])]
    task, data = _task(clips + leak)
    with pytest.raises(DataError, match=r"clip 'clip-0' \(train, .*0\.wav\) and clip 'copy-0' \(test, .*0\.wav\) are the "
                                        r"same excerpt of one audio file"):
        run_benchmark([FakeRep("m", 1.0)], [(task, data)], seeds=1, progress=False, probe_overrides=FAST)
    with pytest.raises(DataError, match="same excerpt"):
        data.validate()


def test_overlapping_spans_and_symlinked_files_across_splits_are_leakage(tmp_path):
    path = write_audio(tmp_path / "long.wav")
    base = [Clip(f"x{i}", write_audio(tmp_path / f"x{i}.wav"), i % 2, "train", f"x{i}") for i in range(4)]
    # overlapping but not identical ranges of one file in train and test: refused
    with pytest.raises(DataError, match=r"clip 'a' \(train, .*long\.wav \[0\.0, 30\.0\)\) and clip 'b' \(test, .*\[20\.0, 50\.0\)\) "
                                        r"are overlapping excerpts"):
        _task(base + [Clip("a", path, 0, "train", "g1", 0.0, 30.0), Clip("b", path, 1, "test", "g2", 20.0, 50.0)])[1].validate()
    # a whole file (no range) overlaps any range of it
    with pytest.raises(DataError, match="overlapping excerpts"):
        _task(base + [Clip("a", path, 0, "valid", "g1"), Clip("b", path, 1, "test", "g2", 5.0, 6.0)])[1].validate()
    # the same file through a symlink, and through '..': the same audio
    link = tmp_path / "alias.wav"
    link.symlink_to(path)
    with pytest.raises(DataError, match="same excerpt"):
        _task(base + [Clip("a", path, 0, "train", "g1"), Clip("b", link, 0, "test", "g2")])[1].validate()
    with pytest.raises(DataError, match="same excerpt"):
        _task(base + [Clip("a", path, 0, "train", "g1"), Clip("b", tmp_path / "audio" / ".." / "long.wav", 0, "test", "g2")])[1].validate()
    # allowed: touching or disjoint ranges across splits, and any overlap within one split (chunked datasets)
    ok = [Clip("a", path, 0, "train", "g1", 0.0, 30.0), Clip("b", path, 1, "test", "g2", 30.0, 60.0),
          Clip("c", path, 0, "valid", "g3", 60.0, 61.0), Clip("d", path, 0, "train", "g1", 10.0, 20.0),
          Clip("e", path, 1, "train", "g4", 0.0, 30.0)]
    assert len(_task(base + ok)[1].validate().clips) == 9


def test_duplicate_clip_ids_are_refused_naming_both_clips(tmp_path):
    clips = _songs(tmp_path, n=10)
    clips.append(Clip("clip-3", clips[3].path, 1 - clips[3].target, clips[3].split, clips[3].group))  # conflicting label
    with pytest.raises(DataError, match=r"clip id 'clip-3' is used twice: clip 'clip-3' \(valid, .*3\.wav\) and clip "
                                        r"'clip-3' \(valid, .*3\.wav\)"):
        _task(clips)[1].validate()


def test_bench_cli_refuses_a_leaky_csv_with_one_error_line(tmp_path, capsys):
    for i in range(10):
        write_audio(tmp_path / f"{i}.wav")
    rows = ["path,label,split,group,start,end"]
    rows += [f"{i}.wav,{'ab'[i % 2]},{['train', 'train', 'train', 'valid', 'test'][i % 5]},g{i},0,0.04" for i in range(10)]
    rows.append("0.wav,a,test,another,0.02,0.05")  # overlaps train clip 0.wav [0, 0.04)
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    rc = main(["bench", "--task", f"csv:{tmp_path / 'labels.csv'}", "--baseline", "chance", "--report", str(tmp_path / "r"),
               "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("m3bert bench: error: task csv-labels: clip '0.wav@0.0-0.04' (train") and "overlapping" in err[0]
    assert not (tmp_path / "r" / "results.json").exists()


# ---------------------------------------------------------------------------------------------
# 9: label files pointing outside the dataset root


def test_label_path_refuses_paths_that_leave_the_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    assert label_path(root, "a/b.wav", where="x.csv:2") == root / "a" / "b.wav"
    assert label_path(root, str(root / "c.wav"), where="x.csv:2") == root / "c.wav"  # absolute, inside
    for bad in ("../../etc/x.wav", "a/../../x.wav", "/etc/x.wav", str(tmp_path / "data2" / "x.wav")):
        with pytest.raises(DataError, match=r"x\.csv:7: path=.* points outside the dataset root .*allow_outside_root=True"):
            label_path(root, bad, where="x.csv:7")
        assert label_path(root, bad, where="x.csv:7", allow_outside_root=True).name == "x.wav"
    for bad in ("", ".", "a/.."):
        with pytest.raises(DataError, match=r"x\.csv:3: path="):
            label_path(root, bad, where="x.csv:3")


def test_rwc_csv_with_a_path_outside_the_root(tmp_path):
    """Before: ``../outside.wav`` in metadata.csv was read from outside the dataset folder."""
    root = tmp_path / "rwc"
    csv = make_rwc(root)
    write_audio(tmp_path / "outside.wav", seconds=1.0)
    csv.write_text(csv.read_text() + "../outside.wav,piano\n")
    with pytest.raises(DataError, match=r"metadata\.csv:13: path='\.\./outside\.wav' points outside the dataset root"):
        load_rwc_instrument(root)
    data = load_rwc_instrument(root, allow_outside_root=True)
    assert any(c.clip_id == "../outside.wav" for c in data.clips)
    csv.write_text(csv.read_text().replace("../outside.wav", str(tmp_path / "outside.wav")))
    with pytest.raises(DataError, match=r"metadata\.csv:13: path='/.*/outside\.wav' points outside"):
        load_rwc_instrument(root)


def test_every_loader_reading_paths_from_a_label_file_checks_them(tmp_path):
    # MTG-Jamendo: PATH column
    mtg = tmp_path / "mtg"
    make_mtg_jamendo(mtg)
    tsv = mtg / "data" / "splits" / "split-0" / "autotagging_moodtheme-train.tsv"
    tsv.write_bytes(tsv.read_bytes().replace(mtg_path(948).encode(), b"../../../../etc/948.mp3"))
    with pytest.raises(DataError, match=r"autotagging_moodtheme-train\.tsv:2: PATH='\.\./\.\./\.\./\.\./etc/948\.mp3' points outside"):
        load_mtg(mtg, subset="moodtheme")
    # MagnaTagATune: mp3_path column (the folder letter is checked, what follows was not)
    mtt = tmp_path / "mtt"
    ann = make_mtt(mtt)
    ann.write_text(ann.read_text().replace('"0/some_artist-some_album-03-song_a-0-29.mp3"', '"0/../../../x.mp3"'))
    with pytest.raises(DataError, match=r"annotations_final\.csv:4: mp3_path='0/\.\./\.\./\.\./x\.mp3' points outside"):
        load_mtt_top50(mtt)
    # Emomusic: file_name column
    emo = tmp_path / "emo"
    make_emomusic(emo)
    info = emo / "songs_info.csv"
    info.write_text(info.read_text().replace("\n2,2.mp3,", "\n2,../../secret.mp3,"))
    with pytest.raises(DataError, match=r"songs_info\.csv:2: file_name='\.\./\.\./secret\.mp3' points outside"):
        load_emomusic_va(emo)
    # NSynth: the note_str keys of examples.json name the files
    ns = tmp_path / "ns"
    make_nsynth(ns)
    p = ns / "nsynth-valid" / "examples.json"
    ex = json.loads(p.read_text())
    ex["../../../../x"] = ex.pop("vocal_acoustic_000-108-127")
    p.write_text(json.dumps(ex))
    with pytest.raises(DataError, match=r"examples\.json: entry '\.\./\.\./\.\./\.\./x': note_str='\.\./\.\./\.\./\.\./x\.wav' points outside"):
        load_nsynth(ns, target="pitch")


# ---------------------------------------------------------------------------------------------
# 8: bench argument errors are one line, before anything is loaded


@pytest.mark.parametrize("extra, expected", [
    (["--protocol", "bogus"], "unknown protocol 'bogus'; registered: ['kim', 'linear', 'marble', 'wu', 'wu-linear']"),
    (["--baseline", "bogus"], "--baseline 'bogus': unknown baseline"),
    (["--seeds", "0"], "--seeds 0: expected an integer >= 1"),
    (["--seeds", "-2"], "--seeds -2: expected an integer >= 1"),
    (["--max-epochs", "0"], "--max-epochs 0: expected an integer >= 1 (leave --max-epochs out for the default)"),
    (["--max-epochs", "-3"], "--max-epochs -3: expected an integer >= 1"),
    (["--threads", "-1"], "--threads -1: expected an integer >= 1"),
    (["--threads", "0"], "--threads 0: expected an integer >= 1"),
])
def test_bench_argument_errors_are_one_line(tmp_path, capsys, extra, expected):
    """Before: --threads -1 was a RuntimeError traceback, --max-epochs 0 and --threads 0 silently meant
    the default, --protocol bogus printed argparse usage (exit 2)."""
    argv = ["bench", "--task", f"rwc-instrument:{tmp_path}", "--report", str(tmp_path / "r"), "--quiet"]
    argv += extra if "--baseline" in extra else extra + ["--baseline", "chance"]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("m3bert bench: error: ") and expected in err[0]


def test_bench_unknown_task_fails_before_any_model_is_loaded(tmp_path, capsys, monkeypatch):
    from m3bert.app.commands import bench

    monkeypatch.setattr(bench, "build_representations", lambda args: pytest.fail("models loaded before the task check"))
    assert main(["bench", "--task", "nope:/x", "--model", "random:m2bert-tiny", "--report", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task 'nope'" in err[0] and "'folder:...'" in err[0]


def test_run_benchmark_seed_errors():
    task, data = _task([Clip(f"c{i}", f"/x/{i}.wav", i % 2, "train", f"g{i}") for i in range(4)])
    for seeds, msg in ((0, "seeds=0: expected a number of repeats >= 1"), ([], "at least one seed"),
                       ([1, 1], "distinct seeds"), ([-1], "distinct seeds >= 0")):
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
            run_benchmark([FakeRep("m", 1.0)], [(task, data)], seeds=seeds, progress=False)


# ---------------------------------------------------------------------------------------------
# 11: loaders say whether their split is predefined (the Kim protocol uses it) or drawn at random


def test_loaders_record_their_split_source(tmp_path):
    from dataset_fixtures import make_extended_ballroom
    from m3bert.tasks.registry import load_task

    make_rwc(tmp_path / "rwc")
    assert load_task(f"rwc-instrument:{tmp_path / 'rwc'}").split_source == "random"  # no split column: 3/1/1 by seed
    make_nsynth(tmp_path / "ns")
    assert load_task(f"nsynth-family:{tmp_path / 'ns'}").split_source == "predefined"
    make_extended_ballroom(tmp_path / "br")
    assert load_task(f"ballroom-ext:{tmp_path / 'br'}").split_source == "random"
    with pytest.raises(DataError, match=r"split_source='later', expected one of \('predefined', 'random'\)"):
        TaskData("t", "multiclass", ["a"], [], split_source="later").validate()
