"""RWC Music Database: Musical Instrument Sound (Goto et al. 2003), from a user-provided CSV.

The RWC instrument database is licensed and ships no machine-readable metadata, so the user
describes their copy in a CSV (``root/metadata.csv`` by default, or ``root`` may be the CSV
itself; ``metadata=`` names another file). Columns (header required, extra columns ignored):

=============  ========  ===============================================================
column         required  meaning
=============  ========  ===============================================================
``path``       yes       audio file, relative to the CSV's folder (absolute: inside it)
``instrument`` yes       class label, e.g. ``piano`` or the RWC code ``PF``
``group``      no        song/recording id; clips of a group never straddle splits
``split``      no        ``train``/``valid`` (or ``validation``)/``test`` for every row
``start``      no        seconds; with ``end``, a clip is a time range of the file
``end``        no        seconds
=============  ========  ===============================================================

Without ``group`` the group is the RWC recording code when the file name starts with one
(``{number:3}{instrument:2}{style:2}{dynamics:1}``, e.g. ``011PFNOM_3.wav`` -> ``011PFNOM``, so
notes cut from one recording stay together), else the path. Without ``split`` the M3BERT
paper's random split by song into five parts 3/1/1 is used, seeded. Classes are the sorted
distinct ``instrument`` values. ``chunk_seconds`` cuts whole files into full chunks
(headers read with soundfile; rows with ``start``/``end`` are kept as given). A ``path`` that leaves
the CSV's folder (``../x.wav``, an absolute path elsewhere) is an error unless
``allow_outside_root=True``. Without a ``split`` column ``TaskData.split_source`` is ``"random"``.
"""

from __future__ import annotations

import re
from pathlib import Path

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import (
    AudioChecker,
    chunk_clips,
    header_index,
    label_path,
    need_root,
    parse_float,
    read_csv_rows,
    split_groups,
)
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

RWC_CODE = re.compile(r"^(\d{3}[A-Z]{2}[A-Z0-9]{2}[PMF])")
SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
OPTIONAL = ("group", "split", "start", "end")


def default_group(rel: str) -> str:
    m = RWC_CODE.match(Path(rel).name)
    return m.group(1) if m else rel


def load_rwc_instrument(
    root: Path | None,
    *,
    skip_missing: bool = False,
    seed: int = 0,
    metadata: str = "metadata.csv",
    chunk_seconds: float | None = None,
    allow_outside_root: bool = False,
) -> TaskData:
    root = need_root(root, "rwc-instrument")
    csv_path = root if root.is_file() else root / metadata
    if not csv_path.is_file():
        raise DataError(f"RWC instrument metadata CSV not found: {csv_path} (columns: path,instrument[,group,split,start,end])")
    base = csv_path.parent
    rows = read_csv_rows(csv_path)
    if not rows:
        raise DataError(f"{csv_path}: empty file, expected a header 'path,instrument[,group,split,start,end]'")
    col = header_index(rows[0], ["path", "instrument"], path=csv_path)
    header = [h.strip() for h in rows[0]]
    opt = {name: header.index(name) for name in OPTIONAL if name in header}

    records = []
    seen: set[tuple[str, str, str]] = set()
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not any(x.strip() for x in row):
            continue
        where = f"{csv_path}:{line_no}"
        if len(row) < len(header):
            raise DataError(f"{where}: {len(row)} fields, expected {len(header)} ({','.join(header)})")
        rel, inst = row[col["path"]].strip(), row[col["instrument"]].strip()
        if not rel or not inst:
            raise DataError(f"{where}: path={rel!r} instrument={inst!r}, expected both non-empty")
        group = row[opt["group"]].strip() if "group" in opt else ""
        split = None
        if "split" in opt:
            raw = row[opt["split"]].strip().lower()
            if raw not in SPLIT_NAMES:
                raise DataError(f"{where}: split={row[opt['split']]!r}, expected one of train, valid, validation, test")
            split = SPLIT_NAMES[raw]
        start = end = None
        if "start" in opt and row[opt["start"]].strip():
            start = parse_float(row[opt["start"]], where=where, field="start", lo=0.0)
        if "end" in opt and row[opt["end"]].strip():
            end = parse_float(row[opt["end"]], where=where, field="end", lo=0.0)
        if start is not None and end is not None and not end > start:
            raise DataError(f"{where}: start={start} end={end}, expected end > start")
        path = label_path(base, rel, where=where, allow_outside_root=allow_outside_root)
        key = (rel, str(start), str(end))
        if key in seen:
            raise DataError(f"{where}: {rel} (start={start}, end={end}) is listed twice")
        seen.add(key)
        records.append((where, rel, path, inst, group or default_group(rel), split, start, end))

    classes = sorted({r[3] for r in records})
    if "split" not in opt:
        split_of = split_groups({r[4] for r in records}, seed=seed)
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips: list[Clip] = []
    for where, rel, path, inst, group, split, start, end in records:
        item = f"{rel} ({where.rsplit('/', 1)[-1]})"
        split = split if split is not None else split_of[group]
        spans: list[tuple[int, float | None, float | None]] = [(0, start, end)]
        if chunk_seconds is not None and start is None and end is None:
            duration = audio.duration(path, item=item)
            if duration is None:
                continue
            spans = chunk_clips(duration, chunk_seconds)
        elif not audio.ok(path, item=item):
            continue
        for k, s, e in spans:
            suffix = f"#{k}" if chunk_seconds is not None and start is None and end is None else ("" if start is None and end is None else f"@{start}-{end}")
            clips.append(Clip(clip_id=rel + suffix, path=path, target=classes.index(inst), split=split, group=group,
                              start=s, end=e, meta={"instrument": inst}))
    return TaskData(task="rwc-instrument", label_type="multiclass", classes=classes, clips=clips, skipped=skipped, root=str(root),
                    split_source="predefined" if "split" in opt else "random")


register_task(Task(
    name="rwc-instrument",
    label_type="multiclass",
    taxonomy="acoustic",
    metrics=["accuracy", "macro_f1"],
    loader=load_rwc_instrument,
    description="RWC instrument classification from a user metadata CSV (path,instrument[,group,split,start,end]); random 3/1/1 split by recording",
    options={"skip_missing": False, "seed": 0},
))
