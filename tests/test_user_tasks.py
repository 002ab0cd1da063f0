"""Your own labelled audio as a task (issue 12, item 14): ``folder:PATH`` and ``csv:FILE`` (.csv/.tsv/.jsonl),
usable wherever a task spec is (load_task, m3bert bench, enrichment)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dataset_fixtures import write_audio
from m3bert.app.cli import main
from m3bert.core.errors import ConfigError, DataError
from m3bert.enrich.samples import build_samples, load_task_data
from m3bert.evaluate.runner import run_benchmark
from m3bert.tasks.registry import get_task, load_task, parse_task_spec
from test_bench_runner import FAST, FakeRep


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


def class_folder(root, classes=("rock", "jazz", "folk"), per_class=6):
    for cls in classes:
        for i in range(per_class):
            write_audio(root / cls / f"{cls}{i}.wav")
    return root


# ---------------------------------------------------------------------------------------------
# folder:PATH


def test_folder_of_class_subfolders(tmp_path):
    root = class_folder(tmp_path / "mysongs")
    write_audio(root / "rock" / "live" / "deep.flac")  # files at any depth below a class folder
    write_audio(root / "rock" / ".hidden.wav")  # hidden: skipped
    (root / "README.txt").write_text("not audio")  # other files: ignored
    (root / "jazz" / "cover.jpg").write_bytes(b"\xff\xd8")
    data = load_task(f"folder:{root}")
    assert data.task == "folder-mysongs" and data.label_type == "multiclass" and data.classes == ["folk", "jazz", "rock"]
    assert len(data.clips) == 19 and data.split_source == "random"
    by_id = {c.clip_id: c for c in data.clips}
    assert data.classes[by_id["rock/live/deep.flac"].target] == "rock" and by_id["jazz/jazz0.wav"].target == 1
    counts = [len(data.split(s)) for s in ("train", "valid", "test")]
    assert counts == [11, 4, 4]  # 3/1/1 of 19 files, each its own group
    # seeded and deterministic: same seed, same split; another seed, another split
    assert [c.split for c in load_task(f"folder:{root}").clips] == [c.split for c in data.clips]
    assert [c.split for c in load_task(f"folder:{root}", seed=1).clips] != [c.split for c in data.clips]
    assert [c.split for c in load_task(f"folder:{root}?seed=1").clips] == [c.split for c in load_task(f"folder:{root}", seed=1).clips]
    # group="folder": the files of one sub-folder stay together
    write_audio(root / "rock" / "live" / "deep2.wav")
    grouped = load_task(f"folder:{root}", group="folder")
    live = [c for c in grouped.clips if c.clip_id.startswith("rock/live/")]
    assert len(live) == 2 and len({c.group for c in live}) == 1 and len({c.split for c in live}) == 1
    task, path = parse_task_spec(f"folder:{root}")
    assert task.taxonomy == "user" and path == str(root)


def test_folder_with_split_folders_uses_them(tmp_path):
    root = tmp_path / "hf"
    for split, n in (("train", 4), ("validation", 2), ("test", 2)):
        class_folder(root / split, classes=("cat", "dog"), per_class=n)
    data = load_task(f"folder:{root}")
    assert data.split_source == "predefined" and data.classes == ["cat", "dog"]
    assert [len(data.split(s)) for s in ("train", "valid", "test")] == [8, 4, 4]
    assert all(c.clip_id.startswith({"train": "train/", "valid": "validation/", "test": "test/"}[c.split]) for c in data.clips)


def test_folder_errors(tmp_path):
    root = class_folder(tmp_path / "d", per_class=2)
    write_audio(root / "loose.wav")
    with pytest.raises(DataError, match=r"audio file\(s\) \['loose\.wav'\] lie directly in this folder"):
        load_task(f"folder:{root}")
    (root / "loose.wav").unlink()
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"d/empty: class folder without audio files"):
        load_task(f"folder:{root}")
    with pytest.raises(DataError, match="is not a folder"):
        load_task(f"folder:{tmp_path / 'nope'}")
    one = class_folder(tmp_path / "one", classes=("solo",), per_class=5)
    with pytest.raises(DataError, match="at least two"):
        load_task(f"folder:{one}")
    with pytest.raises(ConfigError, match=r"label_type='regression', expected one of \['multiclass'\]"):
        load_task(f"folder:{root}", label_type="regression")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['allow_outside_root'\]"):
        load_task(f"folder:{root}?allow_outside_root=1")
    few = class_folder(tmp_path / "few", classes=("a", "b"), per_class=1)
    with pytest.raises(DataError, match="too few for the random 3/1/1 split"):
        load_task(f"folder:{few}")


# ---------------------------------------------------------------------------------------------
# csv:FILE


def table(tmp_path, header, rows, name="labels.csv", audio=True):
    for r in rows:
        rel = r.split(",")[0]
        if audio and rel and not rel.startswith(("/", "..")):
            write_audio(tmp_path / rel)
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header] + rows) + "\n")
    return path


def test_csv_multiclass_with_split_and_group(tmp_path):
    rows = [f"audio/s{i}.wav,{['pop', 'rock'][i % 2]},{['train', 'train', 'train', 'validation', 'test'][i % 5]},"
            f"song{max(i, 1)}" for i in range(10)]  # s0 and s1 (both train) are one song
    path = table(tmp_path, "path,label,split,group", rows)
    data = load_task(f"csv:{path}")
    assert data.task == "csv-labels" and data.label_type == "multiclass" and data.classes == ["pop", "rock"]
    assert data.split_source == "predefined" and data.root == str(tmp_path)
    by_id = {c.clip_id: c for c in data.clips}
    assert by_id["audio/s3.wav"].split == "valid" and by_id["audio/s3.wav"].group == "song3"
    assert by_id["audio/s1.wav"].target == 1 and by_id["audio/s1.wav"].path == tmp_path / "audio" / "s1.wav"
    assert by_id["audio/s0.wav"].group == by_id["audio/s1.wav"].group == "song1"


def test_csv_group_in_two_splits_is_refused(tmp_path):
    rows = [f"s{i}.wav,{'ab'[i % 2]},{s},g" for i, s in enumerate(["train", "test"])]
    path = table(tmp_path, "path,label,split,group", rows)
    with pytest.raises(DataError, match=r"group 'g' appears in splits 'train' and 'test'"):
        load_task(f"csv:{path}")


def test_csv_without_split_column_is_split_by_group(tmp_path):
    rows = [f"a/{i}.wav,{'xyz'[i % 3]},album{i // 3}" for i in range(30)]
    path = table(tmp_path, "path,label,group", rows)
    data = load_task(f"csv:{path}")
    assert data.split_source == "random"
    split_of_group = {}
    for c in data.clips:
        assert split_of_group.setdefault(c.group, c.split) == c.split  # a group never straddles splits
    assert sorted(split_of_group.values()).count("train") == 6 and len(split_of_group) == 10  # 3/1/1 of 10 groups
    assert [c.split for c in load_task(f"csv:{path}").clips] == [c.split for c in data.clips]


def test_csv_multilabel_and_numeric_class_names(tmp_path):
    rows = ["a.wav,guitar;voice", "b.wav,drums", "c.wav,", "d.wav, voice ; drums", "e.wav,guitar", "f.wav,drums"]
    path = table(tmp_path, "path,label", rows)
    data = load_task(f"csv:{path}?name=my-tags")
    assert data.task == "my-tags" and data.label_type == "multilabel" and data.classes == ["drums", "guitar", "voice"]
    y = {c.clip_id: c.target.tolist() for c in data.clips}
    assert y["a.wav"] == [0, 1, 1] and y["c.wav"] == [0, 0, 0] and y["d.wav"] == [1, 0, 1]
    # single labels made multilabel on request; integer class names sort numerically
    ints = table(tmp_path, "path,label", [f"n{i}.wav,{[2, 10, 1][i % 3]}" for i in range(9)], name="ints.csv")
    mc = load_task(f"csv:{ints}")
    assert mc.label_type == "multiclass" and mc.classes == ["1", "2", "10"]
    assert load_task(f"csv:{ints}", label_type="multilabel").label_type == "multilabel"
    # an empty label in a single-label table is an error, not a silent switch to multilabel
    bad = table(tmp_path, "path,label", ["p.wav,a", "q.wav,", "r.wav,b"], name="bad.csv")
    with pytest.raises(DataError, match=r"bad\.csv:3: label='', expected exactly one class name"):
        load_task(f"csv:{bad}")


def test_csv_regression_columns(tmp_path):
    rows = [f"r{i}.wav,{i / 10:.2f},{5 - i / 5:.2f},someone" for i in range(10)]
    path = table(tmp_path, "path,valence,arousal,annotator", rows)
    with pytest.raises(DataError, match=r"labels\.csv:2: annotator='someone', expected a number"):
        load_task(f"csv:{path}")
    path = table(tmp_path, "path,valence,arousal", [r.rsplit(",", 1)[0] for r in rows])
    data = load_task(f"csv:{path}")
    assert data.label_type == "regression" and data.classes == ["valence", "arousal"]
    assert {c.clip_id: c.target.tolist() for c in data.clips}["r5.wav"] == pytest.approx([0.5, 4.0])
    task, _ = parse_task_spec(f"csv:{path}")
    task.load(_)
    assert task.metrics == ["r2"] and task.label_type == "regression"
    # a numeric 'label' column is read as targets on request
    lab = table(tmp_path, "path,label", [f"t{i}.wav,{120 + i}" for i in range(10)], name="tempo.csv")
    reg = load_task(f"csv:{lab}?label_type=regression")
    assert reg.label_type == "regression" and reg.classes == ["label"] and reg.clips[3].target.tolist() == [123.0]


def test_jsonl_and_tsv_forms(tmp_path):
    lines = []
    for i in range(10):
        write_audio(tmp_path / f"j{i}.wav")
        lines.append(json.dumps({"path": f"j{i}.wav", "label": ["a", "b"] if i % 2 else ["c"], "split": ["train", "train", "train", "valid", "test"][i % 5],
                                 "start": 0.0, "end": 0.04, "artist": f"x{i}"}))
    (tmp_path / "l.jsonl").write_text("\n".join(lines) + "\n\n")
    data = load_task(f"csv:{tmp_path / 'l.jsonl'}")
    assert data.label_type == "multilabel" and data.classes == ["a", "b", "c"] and data.task == "csv-l"
    c = data.clips[1]
    assert (c.start, c.end, c.clip_id, c.meta) == (0.0, 0.04, "j1.wav@0.0-0.04", {"artist": "x1"})
    (tmp_path / "bad.jsonl").write_text('{"path": "j0.wav", "label": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: a JSON list, expected an object"):
        load_task(f"csv:{tmp_path / 'bad.jsonl'}")
    (tmp_path / "l.tsv").write_text("path\tlabel\n" + "".join(f"j{i}.wav\t{'pq'[i % 2]}\n" for i in range(10)))
    assert load_task(f"csv:{tmp_path / 'l.tsv'}").classes == ["p", "q"]
    with pytest.raises(ConfigError, match=r"suffix '\.xlsx', expected one of"):
        load_task(f"csv:{tmp_path / 'l.xlsx'}")


def test_csv_errors_name_file_line_and_value(tmp_path):
    ok = [f"s{i}.wav,{'ab'[i % 2]}" for i in range(10)]
    cases = [
        ("file,label", ok, r"columns \['file', 'label'\] lack 'path'"),
        ("path,label,split", [r + ",later" for r in ok], r"labels\.csv:2: split='later', expected one of"),
        ("path,label", ok + ["s0.wav,b"], r"labels\.csv:12: s0\.wav \(start=None, end=None\) is already listed at line 2"),
        ("path,label", ok + ["s0.wav,b,extra"], r"labels\.csv:12: 3 fields, expected 2"),
        ("path,label", ok + ["../up.wav,a"], r"labels\.csv:12: path='\.\./up\.wav' points outside the dataset root"),
        ("path,label,start,end", [r + ",2,1" for r in ok], r"labels\.csv:2: start=2\.0 end=1\.0, expected end > start"),
        ("path,label,start", [r + ",-1" for r in ok], r"labels\.csv:2: start='-1', expected a finite number >= 0"),
        ("path,label,label", ok, r"column names must be non-empty and unique"),
        ("path", [r.split(",")[0] for r in ok], r"columns \['path'\]; expected 'path' and a 'label' column"),
    ]
    for header, rows, msg in cases:
        path = table(tmp_path, header, rows)
        with pytest.raises(DataError, match=msg):
            load_task(f"csv:{path}")
    path = table(tmp_path, "path,label", ok + ["missing.wav,a"], audio=False)
    (tmp_path / "missing.wav").unlink(missing_ok=True)
    with pytest.raises(DataError, match=r"missing\.wav \(labels\.csv:12\): audio file not found"):
        load_task(f"csv:{path}")
    assert len(load_task(f"csv:{path}", skip_missing=True).clips) == 10
    with pytest.raises(ConfigError, match="label_type='tags'"):
        load_task(f"csv:{path}?label_type=tags")
    with pytest.raises(ConfigError, match=r"seed='x', expected an integer"):
        load_task(f"csv:{path}?seed=x")
    with pytest.raises(ConfigError, match="option 'seed', expected KEY=VALUE"):
        load_task(f"csv:{path}?seed")
    with pytest.raises(DataError, match="does not exist"):
        load_task(f"csv:{tmp_path / 'none.csv'}")
    outside = table(tmp_path / "sub", "path,label", [f"../s{i}.wav,{'ab'[i % 2]}" for i in range(10)], audio=False)
    assert len(load_task(f"csv:{outside}?allow_outside_root=true").clips) == 10


# ---------------------------------------------------------------------------------------------
# usable everywhere a task spec is


def test_bench_on_your_own_folder(tmp_path, capsys):
    root = class_folder(tmp_path / "mysongs", classes=("a", "b"), per_class=10)
    rc = main(["bench", "--task", f"folder:{root}", "--baseline", "chance", "--report", str(tmp_path / "r"), "--quiet",
               "--seeds", "2"])
    assert rc == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["tasks"][0]["name"] == "folder-mysongs" and res["tasks"][0]["taxonomy"] == "user"
    assert res["tasks"][0]["metrics"] == ["accuracy", "macro_f1"] and res["tasks"][0]["split_source"] == "random"
    assert res["tasks"][0]["n_clips"] == {"train": 12, "valid": 4, "test": 4}
    assert "folder-mysongs" in capsys.readouterr().out


def test_run_benchmark_on_csv_specs_and_loaded_data(tmp_path):
    # FakeRep seeds its noise from the id "clip-N"; a 3/1/1 split column keeps the classes balanced
    rows = [f"x/clip-{i},{'uvw'[i % 3]},{['train', 'train', 'train', 'valid', 'test'][i % 5]}" for i in range(45)]
    (tmp_path / "x").mkdir()
    for i in range(45):
        (tmp_path / "x" / f"clip-{i}").write_bytes(b"RIFF")  # never decoded
    path = table(tmp_path, "path,label,split", rows, audio=False)
    res = run_benchmark([FakeRep("m", 1.0)], [f"csv:{path}?name=mine"], seeds=1, progress=False, probe_overrides=FAST)
    assert res["tasks"][0]["name"] == "mine" and res["results"][0]["summary"]["metrics"]["accuracy"]["mean"] > 0.8
    data = load_task(f"csv:{path}")  # ready TaskData of a scheme task: the default metrics of its label type
    res = run_benchmark([FakeRep("m", 1.0)], [data], seeds=1, progress=False, probe_overrides=FAST)
    assert res["tasks"][0]["name"] == "csv-labels" and res["tasks"][0]["metrics"] == ["accuracy", "macro_f1"]
    with pytest.raises(ConfigError, match="unknown task 'csv-labels'"):
        get_task("csv-labels")


def test_enrichment_reads_scheme_specs(tmp_path):
    root = class_folder(tmp_path / "songs", classes=("a", "b"), per_class=10)
    rows = [f"r{i}.wav,{i}" for i in range(10)]
    tempo = table(tmp_path, "path,bpm", rows)
    datas, specs = load_task_data([f"folder:{root}", f"csv:{tempo}"])
    assert [d.task for d in datas] == ["folder-songs", "csv-labels"] and specs == [f"folder:{root}", f"csv:{tempo}"]
    samples, infos = build_samples(datas)
    assert [(i.name, i.label_type, i.metrics) for i in infos] == [("folder-songs", "multiclass", ["accuracy", "macro_f1"]),
                                                                  ("csv-labels", "regression", ["r2"])]
    assert len(samples) == 30 and np.isfinite(infos[1].target_mean).all()
