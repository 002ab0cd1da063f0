"""The run directory every trainer writes, and its metrics log (one owner of the run-folder format).

::

    RUN/run.json          {"kind": "pretrain" | "enrich", "config": {...}, "seed", "versions", ...}
    RUN/metrics.jsonl     one JSON object per logged step / epoch / event (append-only)
    RUN/checkpoints/last/ a model directory + trainer files (see m3bert.train.checkpoint)
    RUN/checkpoints/best/ the same, for the best validation score
    RUN/tensorboard/      optional, when TensorBoard is installed (pre-training)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.io import append_jsonl, atomic_write_json, atomic_write_text, read_json

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"


def init_run_dir(out: str | Path, record: dict[str, Any], *, kinds: Sequence[str], compare: Sequence[str]) -> bool:
    """Create ``out`` with ``run.json`` = ``record``, or check that ``out`` is the same run.

    An existing ``run.json`` must have a ``kind`` in ``kinds`` and equal ``record`` on every key
    of ``compare`` (else ``ConfigError`` naming the difference). Returns True when it existed.
    """
    out = Path(out)
    run_json = out / RUN_FILE
    if run_json.is_file():
        try:
            old = read_json(run_json)
        except (OSError, DataError) as exc:
            raise ConfigError(f"{exc}; move {run_json} away or choose another --out") from exc
        if not isinstance(old, dict) or old.get("kind") not in kinds:
            found = old.get("kind") if isinstance(old, dict) else type(old).__name__
            raise ConfigError(f"{out}: run.json is a {found!r} run, not a {kinds[0]} run; choose another --out")
        for key in compare:
            if old.get(key) != record.get(key):
                raise ConfigError(
                    f"{out}: exists with a different {key} (stored {json.dumps(old.get(key), default=str)[:300]}, "
                    f"now {json.dumps(record.get(key), default=str)[:300]}); use a new --out, or --resume {out} to continue it"
                )
        return True
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_json, record)
    return False


class MetricsLog:
    """``RUN/metrics.jsonl``, append-only, plus TensorBoard scalars when asked and installed.

    On resume, :meth:`truncate_after_step` / :meth:`truncate_lines` drop the lines written after
    the checkpoint being resumed (they will be written again), so a resumed run's log equals a
    straight run's. ``enabled=False`` (non-zero DDP ranks) makes every call a no-op.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False,
                 purge_step: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            try:  # TensorBoard is an optional extra: its absence only turns this mirror off
                from torch.utils.tensorboard import SummaryWriter  # optional dependency

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=purge_step)
            except Exception:
                self.tb = None

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def records(self) -> list[dict[str, Any]]:
        """Every complete record (a torn last line, from a kill mid-write, is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for ln in self.path.read_text(encoding="utf-8").splitlines():
            if not ln.strip():
                continue
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
        return out

    def n_lines(self) -> int:
        return len(self.path.read_text(encoding="utf-8").splitlines()) if self.path.is_file() else 0

    def truncate_lines(self, keep: int) -> None:
        """Keep the first ``keep`` lines."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        if len(lines) != keep:
            atomic_write_text(self.path, "".join(lines[:keep]))

    def truncate_after_step(self, step: int) -> None:
        """Keep the records whose ``step`` is at most ``step``."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
