"""Hyper-parameter grids (the paper's Table 4) and :func:`run_enrich`, the entry point of ``m3bert enrich``.

A grid run is a run directory like any other (``run.json`` with its ``grid``, ``summary.json``,
``checkpoints/{best,last}``) plus ``grid.json`` and one sub-run per point under ``grid/pNN-.../``.
All points share one input cache; each resumes on its own, finished ones are skipped; selection
is by validation score.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any, Sequence

from m3bert.core.config import set_dotted
from m3bert.core.errors import ConfigError, DataError
from m3bert.core.io import atomic_write_json, copy_dir_atomic, read_json
from m3bert.enrich.config import EnrichConfig
from m3bert.enrich.loop import open_run_dir, resolve_encoder, run_record, train_enrich
from m3bert.enrich.samples import prepare_data
from m3bert.models.encoder import Encoder
from m3bert.train.run import MetricsLog

# The paper's Table 4 (downstream grid); selection is by validation score.
GRIDS: dict[str, dict[str, list[Any]]] = {
    "paper": {
        "batch_size": [16, 24, 32],
        "optim.lr": [2e-5, 3e-5, 4e-5],
        "epochs": [2, 3, 4],
        "enrichment.dropout": [0.05, 0.1],
    },
}

_SHORT = {"batch_size": "bs", "optim.lr": "lr", "epochs": "ep", "enrichment.dropout": "do"}  # point-name abbreviations


def grid_points(grid: str | dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of a named grid (``"paper"``) or a ``{dotted.key: [values]}`` mapping."""
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ConfigError(f"grid={grid!r}; expected one of {sorted(GRIDS)} or a mapping of key -> values")
        grid = GRIDS[grid]
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], (list, tuple)) or not grid[k]:
            raise ConfigError(f"grid[{k!r}]={grid[k]!r}; expected a non-empty list of values")
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def point_name(i: int, point: dict[str, Any]) -> str:
    """``p03-bs16-lr3e-05-ep2-do0.1``: the sub-run folder of grid point ``i``."""
    parts = []
    for k, v in point.items():
        key = _SHORT.get(k, k.replace(".", "_"))
        parts.append(f"{key}{v:g}" if isinstance(v, float) else f"{key}{v}")
    return f"p{i:02d}-" + "-".join(parts)


def run_enrich(
    config: EnrichConfig,
    *,
    model: str | Path | Encoder,
    tasks: Sequence[Any],
    out: str | Path,
    grid: str | dict[str, list[Any]] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``m3bert enrich``: one run, or a grid of runs (``grid="paper"``) keeping the best by validation.

    Grid points are sub-runs ``out/grid/pNN-.../`` sharing one input cache (``out/cache``); each
    resumes on its own, finished ones are skipped. The best point's checkpoints are copied to
    ``out/checkpoints/{best,last}`` so ``out`` is a run directory like any other. ``cache_dir``
    (default ``out/cache``) may be shared between runs over the same audio and encoder.
    """
    out = Path(out)
    if grid is None:
        return train_enrich(config, model=model, tasks=tasks, out=out, cache_dir=cache_dir, progress=progress)
    points = grid_points(grid)
    base, source = resolve_encoder(model)
    data = prepare_data(tasks, base, scenario=config.scenario, cache_dir=Path(cache_dir or out / "cache"),
                        progress=progress)
    grid_record = grid if isinstance(grid, str) else {k: list(v) for k, v in grid.items()}
    open_run_dir(out, run_record(config, source, data, grid=grid_record))
    results: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for i, point in enumerate(points):
        d = config.to_dict()
        for k, v in point.items():
            set_dotted(d, k, v, what=f"grid key {k!r}")
        cfg = EnrichConfig.from_dict(d)
        name = point_name(i, point)
        sub = out / "grid" / name
        if (sub / "summary.json").is_file():  # finished before an interruption of the grid
            summary = read_json(sub / "summary.json")
        else:
            if progress:
                print(f"grid point {i + 1}/{len(points)}: {name}", flush=True)
            summary = train_enrich(cfg, model=base, out=sub, data=data, progress=progress)
        r = {"name": name, "point": point, "valid_aggregate": summary.get("valid_aggregate"),
             "test_aggregate": summary.get("test_aggregate"), "best_epoch": summary.get("best_epoch")}
        results.append(r)
        # keep checkpoints of the best point so far only (a Small model is ~120 MB per checkpoint)
        if r["valid_aggregate"] is not None and (best is None or r["valid_aggregate"] > best["valid_aggregate"]):
            if best is not None:
                shutil.rmtree(out / "grid" / best["name"] / "checkpoints", ignore_errors=True)
            best = r
        elif (sub / "checkpoints").exists():
            shutil.rmtree(sub / "checkpoints", ignore_errors=True)
        atomic_write_json(out / "grid.json", {"grid": grid_record, "points": results,
                                              "best": None if best is None else best["name"]})
    if best is None:
        raise DataError(f"{out}: no grid point produced a finite validation score")
    src = out / "grid" / best["name"]
    for name in ("best", "last"):
        copy_dir_atomic(src / "checkpoints" / name, out / "checkpoints" / name)
    summary = read_json(src / "summary.json")
    summary.update({"out": str(out), "grid": grid_record, "best_point": best["name"], "best_params": best["point"],
                    "points": results})
    atomic_write_json(out / "summary.json", summary)
    MetricsLog(out).append({"event": "grid", "best": best["name"], "points": results})
    return summary
