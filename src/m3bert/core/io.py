"""Atomic file writes, hashing, seeding and provenance helpers shared by every stage.

Every file a later run may trust is written to a temporary name in the same folder and then
renamed into place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata as md
import json
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from m3bert.core.errors import CheckpointError, DataError, JSONFileError


def _umask() -> int:
    """The process umask (read without changing it for longer than two calls)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _respect_umask(path: Path, *, directory: bool = False) -> None:
    """``mkstemp``/``mkdtemp`` create 0600/0700 entries; give the final file the mode a plain
    ``open``/``mkdir`` would (0666/0777 minus the umask), so models shared between users stay readable."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def make_temp_dir(parent: str | os.PathLike, *, prefix: str) -> Path:
    """A fresh temporary folder inside ``parent`` with the umask's permissions (for :func:`replace_dir`)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    _respect_umask(tmp, directory=True)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` keeps an extension on the temporary name for writers that append one
    (``np.save`` adds ``.npy`` to names without it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = suffix if suffix is not None else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{sfx}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _respect_umask(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=json_default) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def json_default(obj: Any) -> Any:
    """The one JSON encoder hook: numpy scalars/arrays and paths become plain JSON values."""
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a malformed one is a :class:`JSONFileError` naming the file (never a raw
    ``JSONDecodeError``), so a torn or hand-edited ``run.json`` ends in one clear error line."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except UnicodeDecodeError as exc:
        raise JSONFileError(f"{path}: not UTF-8 text ({exc}); expected a JSON file written by m3bert") from None
    except json.JSONDecodeError as exc:
        raise JSONFileError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                            "expected a JSON file written by m3bert (was it cut short or edited?)") from None


def read_format_json(path: str | os.PathLike, *, fmt: str, max_version: int) -> dict[str, Any]:
    """Read a JSON header that names its ``format`` and ``format_version``; refuse anything else.

    Raises ``CheckpointError`` naming the file for a missing/unreadable file, another format or
    a version newer than ``max_version`` (written by a newer m3bert).
    """

    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: format={found!r}, expected {fmt!r}")
    if int(payload.get("format_version", -1)) > max_version:
        raise CheckpointError(f"{path}: format_version={payload.get('format_version')} is newer than this m3bert "
                              f"understands ({max_version}); upgrade m3bert")
    return payload


def file_sha1(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes (content identity for resume and caches)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def config_hash(obj: Any, *, n_chars: int = 12) -> str:
    """Stable short hash of a JSON-serialisable object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=json_default).encode("utf-8")
    return hashlib.sha1(blob).hexdigest()[:n_chars]


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries that shape results."""
    out = {"python": platform.python_version(), "platform": platform.platform()}

    for name in ("m3bert", "numpy", "torch", "librosa", "soundfile", "soxr", "scikit-learn",
                 "mir_eval", "safetensors", "music21"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line (a log record) to ``path``; flushed before returning."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, default=json_default) + "\n")
        fh.flush()


def replace_dir(tmp: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` to ``directory``, replacing an existing one atomically.

    The old folder is renamed aside (``.NAME.old-PID``) before the new one is renamed in, then
    deleted; a crash in between leaves it for :func:`recover_dir`. This is the one atomic folder
    swap of the package (checkpoints, exported models, copied grid points).
    """
    tmp, directory = Path(tmp), Path(directory)
    old = directory.parent / f".{directory.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        if directory.is_dir():
            os.replace(directory, old)
        else:
            directory.unlink()
    os.replace(tmp, directory)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return directory


def recover_dir(directory: str | os.PathLike) -> Path | None:
    """``directory`` if it exists; else restore the newest ``.NAME.old-*`` a crash mid-:func:`replace_dir` left."""
    directory = Path(directory)
    if directory.is_dir():
        return directory
    olds = sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], directory)
        return directory
    return None


def copy_dir_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy folder ``src`` to ``dst`` (a temp copy beside ``dst``, then :func:`replace_dir`)."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.copy-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        shutil.copytree(src, tmp)
        return replace_dir(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|copy|old)-(?P<pid>\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return pid != 0


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the debris a killed writer left in ``folder``: ``.NAME.tmp-PID`` / ``.NAME.copy-PID``
    folders and files of dead processes, and ``.NAME.old-PID`` once ``NAME`` itself is in place
    (an ``old`` whose ``NAME`` is missing is what :func:`recover_dir` restores, so it is kept).
    Returns what was removed. Called when a run starts or resumes, so kill -9 during a save never
    leaves stale copies of a model behind for good."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TEMP_NAME.match(entry.name)
        if m is None or _pid_alive(int(m.group("pid"))):
            continue
        if m.group("kind") == "old" and not (folder / m.group("name")).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def exclusive_lock(lock: str | os.PathLike, *, what: str) -> Iterator[None]:
    """One writer at a time: a non-blocking exclusive OS lock (``fcntl.flock``) on the file ``lock``.

    Released by the OS even if the process is killed, so a crash never leaves a stale lock. A
    second writer gets a ``DataError`` naming ``what`` at once instead of corrupting it. Used by
    the feature store and the embeddings folder.
    """
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock, "a")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DataError(f"{what}: another process is writing it (it holds {lock}); wait for it to finish "
                            "or use another --out") from None
        yield
    finally:
        fh.close()


def read_jsonl(path: str | os.PathLike, *, example: str = "{...}") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-empty line of a JSON-lines file.

    A line that is not JSON, or not a JSON object, is a :class:`JSONFileError` naming the file and
    line (``example`` shows the expected shape). The one JSONL reader for label and metadata files.
    """
    path = Path(path)
    with open(path, "r", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JSONFileError(f"{path}:{line_no}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise JSONFileError(f"{path}:{line_no}: a JSON {type(row).__name__}, expected an object like {example}")
            yield line_no, row
