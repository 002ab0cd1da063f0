"""OpenMIC-2018 instrument recognition (Humphrey et al. 2018): 20 instruments, partial labels.

Layout of ``root`` (``openmic-2018/`` from ``openmic-2018-v1.0.0.tgz``): ``class-map.json``,
``openmic-2018-aggregated-labels.csv`` (``sample_key,instrument,relevance,num_responses``),
``partitions/split01_{train,test}.csv`` (one ``sample_key`` per line; the README's
``train01.txt``/``test01.txt`` names are accepted too) and ``audio/<key[:3]>/<key>.ogg``.

Targets are the official ``Y_true``/``Y_mask`` of the dataset's npz, rebuilt from the
aggregated labels: ``target[i] = relevance >= 0.5`` and ``target_mask[i] = 1`` for the
instruments that were annotated for the clip, 0 elsewhere (unknown, not negative).

Split: the official ``split01`` train (14,915) / test (5,085). There is no official validation
set; ``valid_fraction`` of the train partition (by FMA track, seeded) is held out for it.
The group is the FMA track id (the part of ``sample_key`` before ``_``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.tasks.datasets._common import (
    AudioChecker,
    first_existing,
    header_index,
    need_root,
    parse_float,
    read_csv_rows,
    read_lines,
    split_groups,
)
from m3bert.tasks.registry import Clip, Task, TaskData, register_task


def _partition(root: Path, which: str) -> tuple[Path, list[str]]:
    path = first_existing([root / "partitions" / f"split01_{which}.csv", root / "partitions" / f"{which}01.txt"],
                          f"OpenMIC partition split01_{which}.csv")
    keys = []
    for line_no, line in enumerate(read_lines(path), start=1):
        key = line.strip().strip(",")
        if not key or key == "sample_key":
            continue
        tid, sep, offset = key.partition("_")
        if not (sep and tid.isdigit() and offset.isdigit()):
            raise DataError(f"{path}:{line_no}: sample_key={key!r}, expected '<6-digit FMA id>_<offset>' like '000046_3840'")
        keys.append(key)
    return path, keys


def load_openmic_instrument(root: Path | None, *, skip_missing: bool = False, seed: int = 0, valid_fraction: float = 0.2) -> TaskData:
    root = need_root(root, "openmic-instrument")
    if (root / "openmic-2018").is_dir():
        root = root / "openmic-2018"
    if not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(f"valid_fraction={valid_fraction!r}, expected a number in [0, 1)")
    cmap_path = first_existing([root / "class-map.json"], "OpenMIC class-map.json")
    try:
        cmap = json.loads(cmap_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{cmap_path}: not valid JSON ({exc})") from None
    if not isinstance(cmap, dict) or sorted(cmap.values()) != list(range(len(cmap))):
        raise DataError(f"{cmap_path}: expected an object instrument -> index 0..n-1, got {cmap!r}")
    classes = [name for name, _ in sorted(cmap.items(), key=lambda kv: kv[1])]

    lab_path = first_existing([root / "openmic-2018-aggregated-labels.csv"], "OpenMIC openmic-2018-aggregated-labels.csv")
    rows = read_csv_rows(lab_path)
    if not rows:
        raise DataError(f"{lab_path}: empty file")
    col = header_index(rows[0], ["sample_key", "instrument", "relevance"], path=lab_path)
    labels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not any(x.strip() for x in row):
            continue
        where = f"{lab_path}:{line_no}"
        if len(row) <= max(col.values()):
            raise DataError(f"{where}: {len(row)} fields, expected {len(rows[0])}")
        key, inst = row[col["sample_key"]].strip(), row[col["instrument"]].strip()
        if inst not in cmap:
            raise DataError(f"{where}: instrument={inst!r}, expected one of {classes}")
        rel = parse_float(row[col["relevance"]], where=where, field="relevance", lo=0.0, hi=1.0)
        y, m = labels.setdefault(key, (np.zeros(len(classes), np.float32), np.zeros(len(classes), np.float32)))
        if m[cmap[inst]]:
            raise DataError(f"{where}: {key} has a second row for instrument {inst!r}")
        y[cmap[inst]] = float(rel >= 0.5)
        m[cmap[inst]] = 1.0

    train_path, train_keys = _partition(root, "train")
    test_path, test_keys = _partition(root, "test")
    valid_split = split_groups({k.split("_")[0] for k in train_keys}, seed=seed, weights=(1 - valid_fraction, valid_fraction, 0))
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips: list[Clip] = []
    seen: dict[str, Path] = {}
    for part_path, keys, official in ((train_path, train_keys, "train"), (test_path, test_keys, "test")):
        for key in keys:
            if key in seen:
                raise DataError(f"{part_path}: sample_key {key} is also listed in {seen[key]}")
            seen[key] = part_path
            if key not in labels:
                raise DataError(f"{part_path}: sample_key {key} has no row in {lab_path.name}")
            y, m = labels[key]
            track = key.split("_")[0]
            split = official if official == "test" else valid_split[track]
            path = root / "audio" / key[:3] / f"{key}.ogg"
            if not audio.ok(path, item=key):
                continue
            clips.append(Clip(clip_id=key, path=path, target=y.copy(), split=split, group=track, target_mask=m.copy()))
    return TaskData(task="openmic-instrument", label_type="multilabel", classes=classes, clips=clips, skipped=skipped, root=str(root))


register_task(Task(
    name="openmic-instrument",
    label_type="multilabel",
    taxonomy="acoustic",
    metrics=["roc_auc_macro", "pr_auc_macro"],
    loader=load_openmic_instrument,
    description="OpenMIC-2018 20-instrument recognition with label masks, official split01 (+ seeded valid from train)",
    options={"skip_missing": False, "seed": 0},
    score_metrics=["roc_auc_macro", "pr_auc_macro"],
))
