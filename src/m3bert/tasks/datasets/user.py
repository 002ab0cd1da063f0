"""Your own labelled audio as a task, without writing a loader: ``folder:PATH`` and ``csv:FILE``.

Both are *task schemes* (:func:`m3bert.tasks.registry.register_task_scheme`), so they work
wherever a task spec does: ``load_task("folder:/data/mysongs")``,
``m3bert bench --task csv:/data/labels.csv``, ``m3bert enrich --task folder:/data/mysongs``.
The data pass the same checks as every dataset (:meth:`TaskData.validate`: unique clip ids, no
group and no audio in two splits) and every error names the file, the line and the value.

``folder:ROOT`` -- one sub-folder per class, as ``torchvision.datasets.ImageFolder`` / the
Hugging Face ``audiofolder`` builder::

    ROOT/<class>/**/<file>.wav               classes = the sub-folder names, sorted
    ROOT/<split>/<class>/**/<file>.wav       when every sub-folder of ROOT is a split name:
                                             train, valid (validation, val, dev), test

Audio files are those of :data:`m3bert.audio.AUDIO_EXTENSIONS` at any depth below a class folder;
hidden files and folders are skipped, other files ignored. Audio directly in ROOT (or in a split
folder) and a class folder without audio are errors. The label type is multiclass. Each file is
its own group; with ``group="folder"`` the files of one sub-folder of a class folder
(``ROOT/rock/song1/part1.wav``, ``part2.wav``) form one group, so they stay in one split.

``csv:FILE`` -- a table (``.csv``; ``.tsv`` tab-separated; ``.jsonl`` one JSON object per line)
with a header naming its columns:

=============================  ==================================================================
column                         meaning
=============================  ==================================================================
``path`` (required)            audio file, relative to FILE's folder (absolute: inside it)
``label``                      class name; ``a;b;c`` (or a JSON list) = several labels
``split`` (optional)           train / valid (validation, val, dev) / test, on every row
``group`` (optional)           song / recording id: clips of one group never straddle splits
``start``, ``end`` (optional)  seconds: the clip is that range of the file
any other column               with ``label``: kept as metadata; without it: a regression target
=============================  ==================================================================

Label type, inferred unless ``label_type=`` says it: a ``label`` column is multiclass, or
multilabel when some row holds several labels (``;``-separated or a JSON list; an empty cell is
then "no label"); a table without ``label`` is regression with one target per other column
(numbers on every row). ``label_type="multilabel"`` makes single labels multilabel;
``label_type="regression"`` reads numeric targets from the non-reserved columns (the ``label``
column when there are none). Class names that are all integers sort numerically, others
alphabetically. A path is audio once per table (same file and range twice is an error: write
several labels as ``a;b``). A path that leaves FILE's folder (``../x.wav``, an absolute path
elsewhere) is an error unless ``allow_outside_root=True``.

Groups and splits: without a ``group`` column a clip's group is its file, so ranges of one file
stay together. Without a ``split`` column the groups are split at random 3/1/1 (the M3BERT
paper's rule, :func:`~m3bert.tasks.datasets._common.split_groups`), seeded by ``seed`` and
deterministic (``TaskData.split_source == "random"``); with one, that split is used as given.

Options: loader keyword arguments (``load_task("csv:/d/l.csv", label_type="regression")``) or,
on the command line, appended to the spec as a query: ``csv:/d/l.csv?label_type=regression&seed=3``
(a path that really contains ``?`` is taken whole). ``name`` (the task name; default
``folder-<folder name>`` / ``csv-<file stem>``), ``taxonomy`` (default ``"user"``, or a MARBLE
level), ``label_type``, ``seed``, ``skip_missing``; ``group`` (folder); ``allow_outside_root`` (csv).
Metrics are those of the label type (:data:`~m3bert.tasks.registry.DEFAULT_METRICS`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from m3bert.audio import AUDIO_EXTENSIONS
from m3bert.core.errors import ConfigError, DataError
from m3bert.core.io import read_jsonl
from m3bert.tasks.datasets._common import AudioChecker, label_path, multi_hot, read_csv_rows, split_groups
from m3bert.tasks.registry import (
    AUTO,
    LABEL_TYPES,
    TAXONOMY,
    USER_TAXONOMY,
    Clip,
    Task,
    TaskData,
    register_task_scheme,
)

SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "dev": "valid", "test": "test"}
RESERVED = ("path", "split", "group", "start", "end")
CLASS_COLUMN = "label"
MULTI_SEPARATOR = ";"
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}
FOLDER_GROUPS = ("file", "folder")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


# ---------------------------------------------------------------------------------------------
# shared


def _clean_label_type(label_type: str | None, allowed: tuple[str, ...] = LABEL_TYPES) -> str | None:
    if label_type is None or label_type == AUTO:
        return None
    if label_type not in allowed:
        raise ConfigError(f"label_type={label_type!r}, expected one of {list(allowed)} (or leave it out to infer it)")
    return label_type


def _sort_classes(names: set[str]) -> list[str]:
    """Integer names numerically ("2" before "10"), anything else alphabetically."""
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _random_splits(groups: set[str], *, seed: int, what: str) -> dict[str, str]:
    split_of = split_groups(groups, seed=seed)
    used = set(split_of.values())
    if "train" not in used or "test" not in used:
        raise DataError(f"{what}: {len(groups)} group(s) are too few for the random 3/1/1 split by group (train or "
                        "test would be empty); add files, or give the split yourself (a split column / split folders)")
    return split_of


# ---------------------------------------------------------------------------------------------
# folder:ROOT


def _audio_below(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in filenames
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS]
    return sorted(out, key=lambda p: p.as_posix())


def _subfolders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _no_loose_audio(folder: Path, expected: str) -> None:
    loose = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_EXTENSIONS)
    if loose:
        raise DataError(f"{folder}: audio file(s) {loose[:3]} lie directly in this folder; expected {expected}")


def load_folder(root: Path | None, *, skip_missing: bool = False, seed: int = 0, label_type: str | None = None,
                group: str = "file") -> TaskData:
    """``ROOT/<class>/...`` (or ``ROOT/<split>/<class>/...``) -> multiclass TaskData (module doc)."""
    if root is None:
        raise ConfigError("folder task needs a folder: 'folder:/path/to/ROOT' with one sub-folder per class")
    _clean_label_type(label_type, ("multiclass",))
    if group not in FOLDER_GROUPS:
        raise ConfigError(f"group={group!r}, expected one of {list(FOLDER_GROUPS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"folder task: {root} is not a folder; expected ROOT/<class>/<file> (one sub-folder per class)")
    top = _subfolders(root)
    if not top:
        raise DataError(f"{root}: no sub-folders; expected one sub-folder per class, ROOT/<class>/<file>")
    by_split = all(p.name.lower() in SPLIT_NAMES for p in top)
    class_dirs: list[tuple[str | None, Path]] = []  # (split or None, class folder)
    _no_loose_audio(root, "ROOT/<class>/<file> (one sub-folder per class)")
    if by_split:
        for sdir in top:
            _no_loose_audio(sdir, f"{sdir}/<class>/<file>")
            class_dirs += [(SPLIT_NAMES[sdir.name.lower()], cdir) for cdir in _subfolders(sdir)]
        if not class_dirs:
            raise DataError(f"{root}: split folders {[p.name for p in top]} hold no class folders; expected ROOT/<split>/<class>/<file>")
    else:
        class_dirs = [(None, cdir) for cdir in top]

    items = []  # (rel, path, class name, split or None, group)
    for split, cdir in class_dirs:
        files = _audio_below(cdir)
        if not files:
            raise DataError(f"{cdir}: class folder without audio files ({', '.join(AUDIO_EXTENSIONS)}); "
                            "remove it or add its files")
        for path in files:
            rel = path.relative_to(root).as_posix()
            sub = path.parent.relative_to(cdir)
            g = rel if group == "file" or sub == Path(".") else (cdir / sub).relative_to(root).as_posix() + "/"
            items.append((rel, path, cdir.name, split, g))
    classes = _sort_classes({c for _, _, c, _, _ in items})
    if len(classes) < 2:
        raise DataError(f"{root}: one class folder ({classes}); a classification task needs at least two")
    split_of = None if by_split else _random_splits({g for *_, g in items}, seed=seed, what=str(root))
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips = []
    for rel, path, cls, split, g in items:
        if not audio.ok(path, item=rel):
            continue
        clips.append(Clip(clip_id=rel, path=path, target=classes.index(cls), split=split or split_of[g], group=g,
                          meta={"class": cls}))
    return TaskData(task="folder", label_type="multiclass", classes=classes, clips=clips, skipped=skipped, root=str(root),
                    split_source="predefined" if by_split else "random")


# ---------------------------------------------------------------------------------------------
# csv:FILE


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Columns and ``(line number, row)`` of a ``.csv`` / ``.tsv`` / ``.jsonl`` table."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ConfigError(f"csv task: {path} has suffix {suffix!r}, expected one of {sorted(TABLE_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"csv task: label file {path} does not exist")
    if suffix == ".jsonl":
        rows, columns = [], {}
        for line_no, row in read_jsonl(path, example='{"path": "a.wav", "label": "rock"}'):
            columns.update(dict.fromkeys(row))
            rows.append((line_no, row))
        if not rows:
            raise DataError(f"{path}: no rows; expected one JSON object per line with at least 'path'")
        return list(columns), rows
    table = read_csv_rows(path, delimiter=TABLE_SUFFIXES[suffix])
    if not table or not any(h.strip() for h in table[0]):
        raise DataError(f"{path}: empty file; expected a header such as 'path,label[,split][,group]'")
    header = [h.strip().strip("\ufeff").strip() for h in table[0]]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes or "" in header:
        raise DataError(f"{path}:1: header {header}: column names must be non-empty and unique")
    rows = []
    for line_no, cells in enumerate(table[1:], start=2):
        if not cells or not any(x.strip() for x in cells):
            continue
        if len(cells) != len(header):
            raise DataError(f"{path}:{line_no}: {len(cells)} fields, expected {len(header)} like the header ({','.join(header)})")
        rows.append((line_no, {h: v.strip() for h, v in zip(header, cells)}))
    return header, rows


def _text(value: Any, *, where: str, field: str, required: bool = True) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(f"{where}: {field} is empty, expected a value")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: {field}={value!r}, expected text")
    return str(value).strip()


def _given(value: Any) -> bool:
    """A cell with something in it (an empty CSV cell or a JSON null is not given)."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def _number(value: Any, *, where: str, field: str, lo: float | None = None) -> float:
    if isinstance(value, bool):
        raise DataError(f"{where}: {field}={value!r}, expected a number")
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {field}={value!r}, expected a number") from None
    if not np.isfinite(x) or (lo is not None and x < lo):
        raise DataError(f"{where}: {field}={value!r}, expected a finite number" + (f" >= {lo}" if lo is not None else ""))
    return x


def _class_names(value: Any, *, where: str) -> list[str]:
    """A ``label`` cell -> its class names (``a;b`` or a JSON list = several; empty = none)."""
    if isinstance(value, list):
        parts = [_text(v, where=where, field=CLASS_COLUMN) for v in value]
    elif value is None or isinstance(value, str):
        parts = [p.strip() for p in (value or "").split(MULTI_SEPARATOR)]
        parts = [p for p in parts if p]
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [str(value)]
    elif isinstance(value, float) and value.is_integer():
        parts = [str(int(value))]
    else:
        raise DataError(f"{where}: {CLASS_COLUMN}={value!r}, expected a class name, 'a;b' or a list of names "
                        "(numeric targets: a column not named 'label', or label_type='regression')")
    dupes = sorted({p for p in parts if parts.count(p) > 1})
    if dupes:
        raise DataError(f"{where}: {CLASS_COLUMN}={value!r} repeats {dupes}")
    return parts


def _label_plan(columns: list[str], label_type: str | None, *, path: Path) -> tuple[str | None, list[str]]:
    """(class column or None, regression target columns) for the table's columns and label type."""
    others = [c for c in columns if c not in RESERVED and c != CLASS_COLUMN]
    has_class = CLASS_COLUMN in columns
    if label_type in (None, "multiclass", "multilabel"):
        if has_class:
            return CLASS_COLUMN, []
        if label_type is not None and len(others) == 1:
            return others[0], []
        if label_type is None and others:
            return None, others  # no label column: a regression table
        raise DataError(f"{path}: columns {columns}; expected 'path' and a '{CLASS_COLUMN}' column (class names), or "
                        "numeric target columns for regression")
    targets = others or ([CLASS_COLUMN] if has_class else [])
    if not targets:
        raise DataError(f"{path}: columns {columns}; label_type='regression' needs numeric target column(s) besides "
                        f"{list(RESERVED)}")
    return None, targets


def load_table(root: Path | None, *, skip_missing: bool = False, seed: int = 0, label_type: str | None = None,
               allow_outside_root: bool = False) -> TaskData:
    """A ``path,label[,split][,group][,start,end]`` table (``.csv``/``.tsv``/``.jsonl``) -> TaskData (module doc)."""
    if root is None:
        raise ConfigError("csv task needs a label file: 'csv:/path/to/labels.csv' (or .tsv / .jsonl)")
    label_type = _clean_label_type(label_type)
    path = Path(root).expanduser()
    columns, rows = read_table(path)
    if "path" not in columns:
        raise DataError(f"{path}: columns {columns} lack 'path', expected 'path,label[,split][,group][,start,end]'")
    class_col, targets = _label_plan(columns, label_type, path=path)
    base = path.parent
    has_split = "split" in columns

    records = []  # (where, rel, file, names | values, split, group, start, end, meta)
    several = False  # some row holds a list or several labels: a multilabel table
    seen: dict[tuple[str, float | None, float | None], str] = {}
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        rel = _text(row.get("path"), where=where, field="path")
        file = label_path(base, rel, where=where, allow_outside_root=allow_outside_root)
        start = end = None
        if _given(row.get("start")):
            start = _number(row["start"], where=where, field="start", lo=0.0)
        if _given(row.get("end")):
            end = _number(row["end"], where=where, field="end", lo=0.0)
        if end is not None and not end > (start or 0.0):
            raise DataError(f"{where}: start={start} end={end}, expected end > start")
        key = (os.path.normpath(os.path.abspath(file)), start, end)
        if key in seen:
            raise DataError(f"{where}: {rel} (start={start}, end={end}) is already listed at {seen[key]}; list each clip "
                            f"once (several labels: '{MULTI_SEPARATOR}'-separated)")
        seen[key] = f"line {line_no}"
        split = None
        if has_split:
            raw = _text(row.get("split"), where=where, field="split")
            if raw.lower() not in SPLIT_NAMES:
                raise DataError(f"{where}: split={raw!r}, expected one of {sorted(SPLIT_NAMES)}")
            split = SPLIT_NAMES[raw.lower()]
        group = _text(row.get("group"), where=where, field="group", required=False) or key[0]
        if class_col is not None:
            label: Any = _class_names(row.get(class_col), where=where)
            several |= isinstance(row.get(class_col), list) or len(label) > 1
        else:
            label = [_number(row.get(t), where=where, field=t) for t in targets]
        meta = {k: v for k, v in row.items() if k not in RESERVED and k != class_col and k not in targets}
        records.append((where, rel, file, label, split, group, start, end, meta))

    if class_col is not None:
        multi = label_type == "multilabel" or (label_type is None and several)
        kind = "multilabel" if multi else "multiclass"
        if not multi:
            bad = next((r for r in records if len(r[3]) != 1), None)
            if bad is not None:
                raise DataError(f"{bad[0]}: {class_col}={MULTI_SEPARATOR.join(bad[3])!r}, expected exactly one class "
                                "name (a multiclass table; an empty label is allowed only in multilabel tables)")
        classes = _sort_classes({n for r in records for n in r[3]})
        if len(classes) < (1 if multi else 2):
            raise DataError(f"{path}: class(es) {classes}; a {kind} task needs at least {1 if multi else 2}")
    else:
        kind, classes = "regression", list(targets)

    split_of = None if has_split else _random_splits({r[5] for r in records}, seed=seed, what=str(path))
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips = []
    for where, rel, file, label, split, group, start, end, meta in records:
        if not audio.ok(file, item=f"{rel} ({where.rsplit('/', 1)[-1]})"):
            continue
        if kind == "multiclass":
            target: Any = classes.index(label[0])
        elif kind == "multilabel":
            target = multi_hot((classes.index(n) for n in label), len(classes))
        else:
            target = np.asarray(label, dtype=np.float32)
        span = "" if start is None and end is None else f"@{start if start is not None else 0}-{end if end is not None else 'end'}"
        clips.append(Clip(clip_id=rel + span, path=file, target=target, split=split or split_of[group], group=group,
                          start=start, end=end, meta=meta))
    return TaskData(task="csv", label_type=kind, classes=classes, clips=clips, skipped=skipped, root=str(base),
                    split_source="predefined" if has_split else "random")


# ---------------------------------------------------------------------------------------------
# the schemes


def _as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in TRUE:
        return True
    if str(value).strip().lower() in FALSE:
        return False
    raise ConfigError(f"{key}={value!r}, expected true or false")


def _as_int(value: Any, key: str) -> int:
    try:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError
        return int(float(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}, expected an integer") from None


def _task_name(value: Any) -> str:
    name = str(value).strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise ConfigError(f"name={value!r}, expected letters, digits and . _ + - (it names report columns and folders)")
    return name


def _taxonomy(value: Any) -> str:
    if value not in (*TAXONOMY, USER_TAXONOMY):
        raise ConfigError(f"taxonomy={value!r}, expected one of {[*TAXONOMY, USER_TAXONOMY]}")
    return str(value)


def _default_name(scheme: str, path: str) -> str:
    p = Path(path.rstrip("/\\") or path)
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", p.name if scheme == "folder" else p.stem).strip("._") or "data"
    return f"{scheme}-{stem}"


def _scheme(scheme: str, load: Callable[..., TaskData], options: dict[str, Callable[[Any, str], Any]],
            what: str) -> Callable[[str], tuple[Task, str]]:
    """``make(arg) -> (Task, path)`` for ``scheme:PATH[?key=value&...]``."""
    converters = {"name": lambda v, k: _task_name(v), "taxonomy": lambda v, k: _taxonomy(v),
                  "skip_missing": _as_bool, "seed": _as_int, "label_type": lambda v, k: _clean_label_type(v), **options}

    def check(opts: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(opts) - set(converters))
        if unknown:
            raise ConfigError(f"{scheme} task: unknown option(s) {unknown}; expected some of {sorted(converters)}")
        return {k: converters[k](v, k) for k, v in opts.items()}

    def make(arg: str) -> tuple[Task, str]:
        path, query = arg, {}
        if "?" in arg and not Path(arg).expanduser().exists():
            path, _, q = arg.rpartition("?")
            for part in filter(None, q.split("&")):
                key, sep, value = part.partition("=")
                if not sep or not key:
                    raise ConfigError(f"task spec '{scheme}:{arg}': option {part!r}, expected KEY=VALUE")
                query[key] = value
        if not path:
            raise ConfigError(f"task spec '{scheme}:{arg}': expected '{scheme}:PATH'")
        spec_opts = check(query)
        task = Task(name=spec_opts.pop("name", None) or _default_name(scheme, path), label_type=AUTO,
                    taxonomy=spec_opts.pop("taxonomy", USER_TAXONOMY), metrics=[], loader=load,
                    description=f"your labelled data, {what} ({scheme}:{path})",
                    options={"skip_missing": False, "seed": 0, **spec_opts}, infers_label_type=True)

        def loader(root: Path | None, **kwargs: Any) -> TaskData:
            kw = check(kwargs)
            if "name" in kw:
                task.name = kw.pop("name")
            if "taxonomy" in kw:
                task.taxonomy = kw.pop("taxonomy")
            return load(root, **kw)

        loader.__name__ = f"load_{scheme}"
        task.loader = loader
        return task, path

    return make


register_task_scheme("folder", _scheme("folder", load_folder, {"group": lambda v, k: str(v)},
                                       "one sub-folder per class"))
register_task_scheme("csv", _scheme("csv", load_table, {"allow_outside_root": _as_bool},
                                    "a path,label[,split][,group] table"))
