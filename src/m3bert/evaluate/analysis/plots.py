"""Figures of the analysis: layer x descriptor heatmaps, best unit vs descriptor scatter plots (the
paper's Figs. 5 and 6) and a t-SNE map of clip embeddings (PNG bytes; :func:`write_figures` writes
them into the analysis folder).

Plain matplotlib figures (no pyplot state), rendered through :func:`m3bert.evaluate.report.figure_png`.
t-SNE is scikit-learn's (already a dependency; openTSNE would add one for no gain at the few
hundred clips analysed here): PCA to at most 50 dimensions, then ``TSNE(init="pca",
perplexity=min(30, (n - 1) / 3), random_state=seed)``, exact up to 300 clips (bitwise reproducible),
Barnes-Hut above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib.figure
import numpy as np

from m3bert.core.io import atomic_write_bytes
from m3bert.evaluate.report import figure_png

MIN_TSNE_CLIPS = 5  # fewer clips than this: no map
EXACT_TSNE_MAX = 300  # up to this many clips the exact (deterministic, O(n^2)) t-SNE; Barnes-Hut above


def heatmaps_png(panels: Sequence[tuple[str, np.ndarray]], *, layers: Sequence[str], channels: Sequence[str],
                 vmin: float, vmax: float, cmap: str = "viridis", diff_cmap: str = "RdBu_r",
                 annotate_max: int = 0) -> bytes:
    """One heatmap per ``(title, (layers, channels) array)``; a title starting with "difference"
    uses a diverging map centred on 0. Panels of at most ``annotate_max`` cells show their values
    (off by default: text rendering costs ~1 s per figure on a slow CPU; the report's tables have them)."""
    n = len(panels)
    width = max(6.0, 0.42 * len(channels) + 2.0)
    fig = matplotlib.figure.Figure(figsize=(width, (0.42 * len(layers) + 1.6) * n))
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, (title, a) in zip(axes, panels):
        a = np.asarray(a, dtype=np.float64)
        diff = title.lower().startswith("difference")
        lim = max(1e-6, float(np.nanmax(np.abs(a)))) if diff and np.isfinite(a).any() else None
        im = ax.imshow(a, aspect="auto", cmap=diff_cmap if diff else cmap,
                       vmin=-lim if diff else vmin, vmax=lim if diff else vmax)
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels(layers, fontsize=7)
        ax.set_xticks(range(len(channels)))
        ax.set_xticklabels(channels, rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        if a.size <= annotate_max:
            for i in range(a.shape[0]):
                for j in range(a.shape[1]):
                    if np.isfinite(a[i, j]):
                        ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=5,
                                color="white" if (not diff and a[i, j] < (vmin + vmax) / 2) else "black")
        fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    fig.subplots_adjust(hspace=0.6)
    return figure_png(fig)


def scatter_png(panels: Sequence[dict[str, Any]]) -> bytes:
    """One scatter per panel ``{"x": unit values, "y": descriptor values, "title", "xlabel", "ylabel"}``."""
    n = max(1, len(panels))
    fig = matplotlib.figure.Figure(figsize=(4.2 * n, 3.6))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, p in zip(axes, panels):
        ax.scatter(p["x"], p["y"], s=4, alpha=0.4, lw=0)
        ax.set_xlabel(p["xlabel"], fontsize=8)
        ax.set_ylabel(p["ylabel"], fontsize=8)
        ax.set_title(p["title"], fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


def tsne_xy(vectors: np.ndarray, *, seed: int) -> tuple[np.ndarray, float]:
    """2-d t-SNE of ``(n, D)`` vectors (standardised, PCA to <= 50 dims); returns ``(xy, perplexity)``."""
    from sklearn.decomposition import PCA  # heavy import (~1 s), only when a map is drawn
    from sklearn.manifold import TSNE  # heavy import, only when a map is drawn

    x = np.asarray(vectors, dtype=np.float64)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    n_comp = min(50, x.shape[0] - 1, x.shape[1])
    if n_comp >= 2 and x.shape[1] > n_comp:
        x = PCA(n_components=n_comp, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(1.0, (x.shape[0] - 1) / 3.0)))
    method = "exact" if x.shape[0] <= EXACT_TSNE_MAX else "barnes_hut"  # exact: bitwise reproducible
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", method=method,
              random_state=seed).fit_transform(x)
    return xy, perplexity


def _colour_values(labels: Sequence[Any]) -> tuple[str, Any]:
    """("none" | "categorical" | "continuous", values) for the labels of the mapped clips."""
    if not labels or all(v is None for v in labels):
        return "none", None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels):
        return "continuous", np.asarray(labels, dtype=np.float64)
    names = []
    for v in labels:
        if isinstance(v, list):
            names.append(v[0] if len(v) == 1 else ("(none)" if not v else "+".join(sorted(map(str, v)))))
        else:
            names.append(str(v))
    return "categorical", names


def tsne_png(maps: Sequence[tuple[str, np.ndarray]], labels: Sequence[Any], *, label_name: str) -> bytes:
    """One panel per ``(title, xy)``; points coloured by ``labels`` (class names, tag lists or numbers)."""
    kind, values = _colour_values(labels)
    fig = matplotlib.figure.Figure(figsize=(4.6 * len(maps) + (1.8 if kind == "categorical" else 0.6), 4.2))
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, (title, xy) in zip(axes, maps):
        if kind == "continuous":
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, cmap="viridis", s=14)
            fig.colorbar(sc, ax=ax, label=label_name)
        elif kind == "categorical":
            classes = sorted(set(values))
            cmap = matplotlib.colormaps["tab20" if len(classes) > 10 else "tab10"]
            for i, c in enumerate(classes):
                pts = np.asarray([v == c for v in values])
                ax.scatter(xy[pts, 0], xy[pts, 1], s=14, color=cmap(i % cmap.N), label=c)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=14)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if kind == "categorical":
        handles, names = axes[-1].get_legend_handles_labels()
        if len(names) <= 25:
            axes[-1].legend(handles, names, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), title=label_name,
                            title_fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


# ---------------------------------------------------------------------------------------------
# figures


SCATTER_GROUPS = ("centroid", "harmonicity")  # the paper's Figs. 5 and 6


def write_figures(result: dict[str, Any], *, reservoir: Any, done: list[dict[str, Any]],
                  clip_vectors: dict[str, list[np.ndarray]], out: Path, seed: int, tsne_layer: int) -> None:
    """Heatmaps, the best-unit scatter plots (from the ``reservoir`` sample of frames) and the t-SNE
    map of the finished items' ``clip_vectors`` as PNGs in ``out``; their names (and the t-SNE
    coordinates) go into ``result``."""
    names = list(result["models"])
    channels = result["descriptors"]["channels"]
    layers = result["models"][names[0]]["layers"]
    figures = []
    for key, fname, title, lo in (("best_abs_r", "heatmap_abs_r.png", "best |r|", 0.0),
                                  ("probe_r2", "heatmap_probe_r2.png", "probe R^2 (held out)", 0.0)):
        panels = [(f"{title}: {result['models'][n]['spec']}", np.array(result["models"][n][key], dtype=np.float64))
                  for n in names]
        if len(names) > 1:
            panels.append((f"difference ({names[0]} - {names[1]})", panels[0][1] - panels[1][1]))
        atomic_write_bytes(out / fname, heatmaps_png(panels, layers=layers, channels=channels, vmin=lo, vmax=1.0))
        figures.append(fname)
    res = reservoir
    scatter = []
    model = names[0]
    for g in SCATTER_GROUPS:
        if g not in result["descriptors"]["groups"] or res.keys.size == 0:
            continue
        j = channels.index(g)
        b = result["models"][model]["best"][g]
        rows = res.valid[:, j]
        if rows.sum() < 3 or b["abs_r"] is None:
            continue
        x = res.states[model][b["layer_index"]][rows, b["unit"]]
        unit = result["descriptors"]["info"][g][0]
        scatter.append({"x": x, "y": res.y[rows, j], "xlabel": f"{b['layer']} unit {b['unit']} activation",
                        "ylabel": f"{g}" + (f" ({unit})" if unit else ""),
                        "title": f"{g}: Pearson r = {b['r']:.3f}, Spearman {b['spearman']:.3f}"})
    if scatter:
        atomic_write_bytes(out / "scatter_best_units.png", scatter_png(scatter))
        figures.append("scatter_best_units.png")
    n_clips = len(done)
    result["tsne"] = None
    if n_clips >= MIN_TSNE_CLIPS:
        maps, coords = [], {}
        for n in names:
            xy, perplexity = tsne_xy(np.stack(clip_vectors[n]), seed=seed)
            maps.append((f"{result['models'][n]['spec']} ({result['models'][n]['layers'][tsne_layer]})", xy))
            coords[n] = np.round(xy, 4).tolist()
        labels = [d["label"] for d in done]
        task = result["inputs"].get("task")
        atomic_write_bytes(out / "tsne.png", tsne_png(maps, labels, label_name=task["task"] if task else ""))
        figures.append("tsne.png")
        result["tsne"] = {"layer": result["models"][model]["layers"][tsne_layer], "perplexity": perplexity,
                          "items": [d["item_id"] for d in done], "coordinates": coords}
    result["figures"] = figures
