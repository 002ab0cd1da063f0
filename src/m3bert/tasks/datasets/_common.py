"""Helpers shared by the dataset loaders: split rules, audio checks, chunking, strict parsing.

Every loader follows the same contract (see ``m3bert.tasks.registry``):

* ``loader(root, *, skip_missing=False, ...) -> TaskData``; ``root`` is the user's local copy,
  nothing is ever downloaded.
* A malformed metadata row raises :class:`DataError` naming the file, the row and the value.
* A missing (or zero-byte, or unreadable where a duration is needed) audio file raises
  :class:`DataError`, or with ``skip_missing=True`` is recorded in ``TaskData.skipped``.
* Files that a dataset's maintainers or benchmarks list as corrupt are always left out and
  recorded in ``TaskData.skipped`` with the reason, so the counts stay explainable.
* Loaders never decode audio; where a duration is needed (chunking) they call
  ``soundfile.info``, which reads only the header (or scans MP3 frame headers).
* An audio path written in a label file goes through :func:`label_path`: a value that leaves the
  dataset root (``../../etc/x.wav``, an absolute path elsewhere) is a DataError naming the file,
  line and value, unless the loader is given ``allow_outside_root=True``. Loaders that build paths
  only from validated ids (digits, fixed folder names) or from scanning the root have no such
  value to check.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf

from m3bert.core.errors import ConfigError, DataError

# The M3BERT paper (Greer et al. 2023, "Downstream tasks"): "we split up our data randomly into
# five equal parts, using three parts for training, one part for validation, and one part for
# testing ... according to number of songs".
PAPER_SPLIT_WEIGHTS = (3, 1, 1)


def need_root(root: Path | None, task: str) -> Path:
    """Return ``root`` as a Path, or raise a ConfigError telling how to give one."""
    if root is None:
        raise ConfigError(f"task {task} needs a dataset path: use '{task}:/path/to/dataset'")
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"task {task}: dataset path {root} does not exist")
    return root


def label_path(base: Path, value: str, *, where: str, field: str = "path", allow_outside_root: bool = False) -> Path:
    """The audio file that a label file names: ``value`` relative to ``base`` (absolute values as written).

    ``base`` is the folder the label file's paths are relative to (the dataset root, its audio
    folder, or the label file's folder). A value that escapes ``base`` -- an absolute path
    elsewhere, or ``..`` parts that climb above it -- raises a DataError naming ``where``
    (``file:line``), the field and the value, unless ``allow_outside_root``. The check is on the
    path as written, normalised but without following symlinks, so a dataset whose audio folder
    is a symlink to another disk still loads.
    """
    raw = str(value)
    if not raw.strip() or "\x00" in raw:
        raise DataError(f"{where}: {field}={value!r}, expected the path of an audio file")
    base_abs = os.path.normpath(os.path.abspath(base))
    target = os.path.normpath(os.path.join(base_abs, raw))  # an absolute value replaces base_abs
    if target == base_abs:
        raise DataError(f"{where}: {field}={value!r} names the dataset folder {base} itself, expected an audio file in it")
    inside = target.startswith(base_abs.rstrip(os.sep) + os.sep)
    if not inside and not allow_outside_root:
        raise DataError(f"{where}: {field}={value!r} points outside the dataset root {base} (to {target}); expected a "
                        "path inside it (pass allow_outside_root=True to the loader to allow files elsewhere)")
    return Path(raw) if os.path.isabs(raw) else Path(base) / raw


def first_existing(candidates: Iterable[Path], what: str) -> Path:
    """The first of ``candidates`` that exists; a DataError listing them all otherwise."""
    candidates = list(candidates)
    for c in candidates:
        if c.exists():
            return c
    listed = ", ".join(str(c) for c in candidates)
    raise DataError(f"{what} not found: looked for {listed}")


def read_lines(path: Path) -> list[str]:
    """Lines of a text file with ``\\r``/``\\n`` removed (CRLF files are common: MTG-Jamendo)."""
    with open(path, encoding="utf-8", newline="") as fh:
        return [line.rstrip("\r\n") for line in fh]


def read_csv_rows(path: Path, *, delimiter: str = ",") -> list[list[str]]:
    """All rows of a (quoted) CSV/TSV file; the csv module handles quotes and CRLF."""
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh, delimiter=delimiter))


def header_index(header: Sequence[str], names: Sequence[str], *, path: Path) -> dict[str, int]:
    """Column positions of ``names`` in ``header`` (whitespace-stripped); DataError if any is absent."""
    stripped = [h.strip().strip("\ufeff") for h in header]
    missing = [n for n in names if n not in stripped]
    if missing:
        raise DataError(f"{path}: header lacks column(s) {missing}; found {stripped}")
    return {n: stripped.index(n) for n in names}


def parse_float(value: str, *, where: str, field: str, lo: float | None = None, hi: float | None = None) -> float:
    """``float(value)`` with a DataError naming ``where``/``field`` when it is not a finite number in range."""
    try:
        x = float(value.strip())
    except (ValueError, AttributeError):
        raise DataError(f"{where}: {field}={value!r}, expected a number") from None
    if not math.isfinite(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
        raise DataError(f"{where}: {field}={value!r}, expected a finite number in [{lo}, {hi}]")
    return x


def multi_hot(indices: Iterable[int], n_classes: int) -> np.ndarray:
    """0/1 float32 vector ``(n_classes,)`` with ones at ``indices``."""
    y = np.zeros(n_classes, dtype=np.float32)
    y[list(indices)] = 1.0
    return y


def split_groups(groups: Iterable[str], *, seed: int, weights: Sequence[float] = PAPER_SPLIT_WEIGHTS) -> dict[str, str]:
    """Seeded random split of *groups* (songs) into train/valid/test in proportion ``weights``.

    With the default ``(3, 1, 1)`` this is the M3BERT paper's "random split by song into five
    parts, three for training, one for validation, one for testing". Groups are sorted before
    shuffling, so the result depends only on the set of groups and the seed (not on file-system
    order). Part boundaries are ``round(n * cumulative_weight / total)``.
    """
    if len(weights) != 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"split weights={tuple(weights)!r}, expected three non-negative numbers (train, valid, test)")
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    total = float(sum(weights))
    n = len(unique)
    b1 = int(round(n * weights[0] / total))
    b2 = int(round(n * (weights[0] + weights[1]) / total))
    out: dict[str, str] = {}
    for rank, i in enumerate(order):
        out[unique[i]] = "train" if rank < b1 else ("valid" if rank < b2 else "test")
    return out


def chunk_spans(duration: float, chunk_seconds: float) -> list[tuple[float, float]]:
    """``[start, end)`` spans of the full ``chunk_seconds`` chunks of a ``duration``-second file.

    The remainder shorter than a chunk is dropped (as jukemir/MARBLE do for GiantSteps). A file
    shorter than one chunk gives a single span over the whole file, so no song disappears.
    This rule is consistent with the M3BERT paper's DEAM count of 2,099 excerpts: the 1,744
    45-s excerpts give one chunk each and the 58 full-length 2015 songs (about 3 min) give the
    remaining ~355. It differs on purpose from :func:`m3bert.audio.chunk_spans`, the paper's
    *pre-training* rule, which halves 30-60 s tracks and would give over 3,488 DEAM excerpts.
    """
    if chunk_seconds <= 0:
        raise ConfigError(f"chunk_seconds={chunk_seconds!r}, expected > 0")
    if not duration > 0:
        return []
    n = int(math.floor(duration / chunk_seconds + 1e-9))
    if n == 0:
        return [(0.0, float(duration))]
    return [(k * chunk_seconds, (k + 1) * chunk_seconds) for k in range(n)]


class AudioChecker:
    """Checks that audio files exist (and are non-empty) without decoding them.

    A bad file raises DataError, or with ``skip_missing`` appends ``(item, reason)`` to
    ``skipped`` and tells the loader to leave the clip out.
    """

    def __init__(self, *, skip_missing: bool, skipped: list[tuple[str, str]]):
        self.skip_missing = bool(skip_missing)  # record instead of raising
        self.skipped = skipped  # shared with the TaskData being built

    def _bad(self, item: str, reason: str) -> None:
        if not self.skip_missing:
            raise DataError(f"{item}: {reason} (use skip_missing=True / --skip-missing to skip and record such items)")
        self.skipped.append((item, reason))

    def ok(self, path: Path, *, item: str) -> bool:
        """True when ``path`` is a non-empty file; otherwise raise or record (see class doc)."""
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            self._bad(item, f"audio file not found: {path}")
            return False
        except NotADirectoryError:
            self._bad(item, f"audio file not found: {path}")
            return False
        if size == 0:
            self._bad(item, f"audio file is empty (0 bytes): {path}")
            return False
        return True

    def find(self, candidates: Sequence[Path], *, item: str) -> Path | None:
        """The first existing non-empty file among ``candidates`` (e.g. ``.wav`` then ``.au``)."""
        for c in candidates:
            try:
                if os.stat(c).st_size > 0:
                    return c
            except (FileNotFoundError, NotADirectoryError):
                continue
        if candidates and Path(candidates[0]).is_file():
            self._bad(item, f"audio file is empty (0 bytes): {candidates[0]}")
        else:
            self._bad(item, "audio file not found: " + " or ".join(str(c) for c in candidates))
        return None

    def duration(self, path: Path, *, item: str) -> float | None:
        """Duration in seconds from the file header (``soundfile.info``; no decoding)."""
        if not self.ok(path, item=item):
            return None

        try:
            info = sf.info(str(path))
        except Exception as exc:  # libsndfile raises a bare RuntimeError/LibsndfileError
            self._bad(item, f"cannot read the audio header of {path}: {exc}")
            return None
        if not info.duration > 0:
            self._bad(item, f"audio file has no samples: {path}")
            return None
        return float(info.duration)


def chunk_clips(duration: float, chunk_seconds: float | None) -> list[tuple[int, float | None, float | None]]:
    """``(index, start, end)`` per chunk; one whole-file entry when ``chunk_seconds`` is None."""
    if chunk_seconds is None:
        return [(0, None, None)]
    return [(k, s, e) for k, (s, e) in enumerate(chunk_spans(duration, chunk_seconds))]
