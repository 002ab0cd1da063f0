"""The analysis report: one sentence per descriptor (encoded or not, with its bound, against the
paper's statements), the rho table, and the figures, as :class:`~m3bert.evaluate.report.Section`
objects rendered to ``DIR/report.md`` and ``DIR/report.html`` by the benchmark report's renderers.

The paper (Greer et al. 2023, "Correlational analysis" and "Discussion", Figs. 5-6) states:
a unit correlates with spectral centroid (Pearson's rho = .831) and one with harmonicity
(rho = .823); harmonicity and percussiveness correlate with rho > .8; brightness and roll-off
"were also correlated"; f0, spectral flatness, contrast and zero-crossing rate "were not found to be
highly correlated"; RMS was not analysed (captured by MFCC 0 in the inputs). Those statements are
:data:`PAPER`; every number here comes from ``analysis.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m3bert.core.io import atomic_write_text
from m3bert.evaluate.report import Figure, Section, Table, render_html, render_markdown

#: descriptor group -> (the paper's verdict: "encoded" / "not encoded" / None, what it says)
PAPER: dict[str, tuple[str | None, str]] = {
    "centroid": ("encoded", "a unit with Pearson's rho = .831 (Fig. 5)"),
    "harmonicity": ("encoded", "a unit with rho = .823 (Fig. 6); 'rho > .8'"),
    "percussiveness": ("encoded", "correlated, 'rho > .8'"),
    "brightness": ("encoded", "'also correlated' (no value)"),
    "rolloff": ("encoded", "'also correlated' (no value)"),
    "f0": ("not encoded", "'not found to be highly correlated'"),
    "flatness": ("not encoded", "'not found to be highly correlated'"),
    "contrast": ("not encoded", "'not found to be highly correlated'"),
    "zcr": ("not encoded", "'not found to be highly correlated'"),
    "rms": (None, "not analysed ('captured by MFCC 0' in the inputs)"),
    "onset_strength": (None, "spectral flux computed, no result stated"),
    "bandwidth": (None, "not in the paper"),
    "voiced_prob": (None, "not in the paper"),
    "voiced": (None, "not in the paper"),
    "tempo": (None, "not in the paper"),
}
PAPER_RHO = {"centroid": 0.831, "harmonicity": 0.823}

FIGURE_CAPTIONS = {
    "heatmap_abs_r.png": "Best |r| of any unit per layer (rows) and descriptor (columns): the model, the random twin "
                         "of the same architecture, and their difference.",
    "heatmap_probe_r2.png": "Linear-probe R^2 (ridge from all units of the layer, held-out groups) per layer and "
                            "descriptor: model, random twin, difference.",
    "scatter_best_units.png": "The model's best unit against its descriptor on the reservoir sample of frames "
                              "(the paper's Figs. 5 and 6).",
    "tsne.png": "t-SNE of clip embeddings (frame means of the chosen layer), model and random twin, coloured by the "
                "task's labels.",
}


def _n(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def best_channel(res: dict[str, Any], model: str, group: str) -> str:
    """The channel of ``group`` whose best unit has the highest |r| in ``model``."""
    chans = [c for c, g in zip(res["descriptors"]["channels"], res["descriptors"]["groups"]) if g == group]
    best = res["models"][model]["best"]
    return max(chans, key=lambda c: (best[c]["abs_r"] or 0.0))


def verdict(res: dict[str, Any], model: str, group: str) -> dict[str, Any]:
    """The numbers of one descriptor group for one model and the comparison with the random twin and the paper."""
    ch = best_channel(res, model, group)
    m = res["models"][model]
    b = m["best"][ch]
    names = list(res["models"])
    base = names[1] if len(names) > 1 and names[0] == model else None
    paper_claim, paper_text = PAPER.get(group, (None, "not in the paper"))
    ours = "encoded" if b["encoded"] else "not encoded"
    agree = None if paper_claim is None or b["abs_r"] is None else ("agrees" if paper_claim == ours else "differs")
    out = {"group": group, "channel": ch, "layer": b["layer"], "unit": b["unit"], "r": b["r"], "abs_r": b["abs_r"],
           "abs_lower": b["abs_lower"], "spearman": b["spearman"], "encoded": b["encoded"], "n_frames": b["n_frames"],
           "probe_r2": m["best_probe"][ch]["r2"], "probe_layer": m["best_probe"][ch]["layer"],
           "paper": paper_text, "paper_claim": paper_claim, "agreement": agree, "paper_rho": PAPER_RHO.get(group)}
    if base is not None:
        bb = res["models"][base]["best"][ch]
        out.update({"random_abs_r": bb["abs_r"], "random_abs_lower": bb["abs_lower"],
                    "random_r2": res["models"][base]["best_probe"][ch]["r2"],
                    "beyond_random": res["comparison"][ch].get("beyond_random")})
    return out


def sentence(res: dict[str, Any], model: str, group: str) -> str:
    v = verdict(res, model, group)
    thr = res["config"]["threshold"]
    label = res["descriptors"]["info"][group][1]
    if v["abs_r"] is None:
        return (f"**{label}**: not testable here: constant over the {v['n_frames']} analysed frames (no correlation is "
                f"defined); paper: {v['paper']}.")
    many = sum(g == group for g in res["descriptors"]["groups"]) > 1
    where = f"{v['layer']} unit {v['unit']}" + (f" ({v['channel']}, the best channel of the group)" if many else "")
    head = f"**{label}**: {'encoded' if v['encoded'] else 'not encoded'}"
    bound = (f"best unit {where}, r = {_n(v['r'])} (Spearman {_n(v['spearman'])}), corrected lower bound on |r| "
             f"{_n(v['abs_lower'])} {'>' if v['encoded'] else '<='} {thr}")
    parts = [f"{head}: {bound}"]
    if "random_abs_r" in v:
        more = "more than" if v["beyond_random"] else "not clearly more than"
        diff = None if v["random_abs_r"] is None or v["abs_r"] is None else v["abs_r"] - v["random_abs_r"]
        parts.append(f"random twin: best |r| {_n(v['random_abs_r'])}, so {more} a random network "
                     f"(difference {'n/a' if diff is None else f'{diff:+.3f}'})")
        parts.append(f"linear probe R^2 {_n(v['probe_r2'])} (random {_n(v['random_r2'])})")
    else:
        parts.append(f"linear probe R^2 {_n(v['probe_r2'])}")
    paper = f"paper: {v['paper']}" + (f" ({v['agreement']})" if v["agreement"] else "")
    parts.append(paper)
    return "; ".join(parts) + "."


def rho_table(res: dict[str, Any], model: str) -> Table:
    groups = list(dict.fromkeys(res["descriptors"]["groups"]))
    has_base = len(res["models"]) > 1
    headers = ["descriptor", "best unit", "r", "|r| lower bound", "Spearman", "encoded"]
    headers += ["random |r|", "difference", "beyond random"] if has_base else []
    headers += ["probe R^2"] + (["random R^2"] if has_base else []) + ["paper", "vs paper"]
    rows = []
    for g in groups:
        v = verdict(res, model, g)
        where = "constant" if v["abs_r"] is None else f"{v['layer']}/{v['unit']}"
        row: list[Any] = [v["channel"], where, v["r"], v["abs_lower"], v["spearman"], "yes" if v["encoded"] else "no"]
        if has_base:
            diff = None if v["random_abs_r"] is None or v["abs_r"] is None else v["abs_r"] - v["random_abs_r"]
            row += [v["random_abs_r"], diff, "yes" if v["beyond_random"] else "no"]
        row += [v["probe_r2"]] + ([v["random_r2"]] if has_base else []) + [v["paper"], v["agreement"] or "–"]
        rows.append(row)
    return Table(headers, rows)


def figures_of(res: dict[str, Any], out: Path) -> list[Figure]:
    figs = []
    for name in res.get("figures", []):
        path = Path(out) / name
        if path.is_file():
            figs.append(Figure(FIGURE_CAPTIONS.get(name, name), path.read_bytes()))
    return figs


def analysis_sections(res: dict[str, Any], out: str | Path, *, title: str = "Interpretability analysis") -> list[Section]:
    """The report's sections: what was analysed, one sentence per descriptor, the table, the figures."""
    out = Path(out)
    model = next(iter(res["models"]))
    m = res["models"][model]
    inp = res["inputs"]
    task = inp.get("task")
    what = (f"task `{task['spec']}`, split `{task['split']}`" if task else "the given audio files")
    n_frames = inp["n_frames"]
    intro = (f"Model `{m['spec']}` ({', '.join(m['layers'])}; {m['n_units_tested']} units) over {what}: "
             f"{inp['n_done']} of {inp['n_items']} item(s) analysed ({inp['n_failed']} failed), "
             f"{n_frames['train'] + n_frames['test']} frames ({n_frames['test']} in the probe's held-out groups).\n\n"
             f"Rules. {res['rules']['bound']}. Encoded = {res['rules']['encoded']}. "
             + (f"Beyond random = {res['rules']['beyond_random']} (the random twin: `{list(res['models'].values())[1]['spec']}`). "
                if len(res["models"]) > 1 else "")
             + f"Spearman: {res['rules']['spearman']}. Probe: {res['rules']['probe']}. {res['rules']['frames']}.")
    groups = list(dict.fromkeys(res["descriptors"]["groups"]))
    text = "\n\n".join(sentence(res, model, g) for g in groups)
    secs = [Section(title=title, text=intro),
            Section(title=f"{title}: what the model encodes", text=text, table=rho_table(res, model),
                    figures=figures_of(res, out))]
    if inp["failures"]:
        rows = [[f["item_id"], f["error"]] for f in inp["failures"][:100]]
        secs.append(Section(title=f"{title}: skipped items", text=f"{inp['n_failed']} item(s) could not be analysed.",
                            table=Table(["item", "reason"], rows)))
    return secs


def write_analysis_report(res: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``DIR/report.md`` (+ ``DIR/figures/``) and a self-contained ``DIR/report.html``."""
    out = Path(out)
    secs = [s.to_dict() for s in analysis_sections(res, out)]
    head = {"protocol": {"name": "interpretability"}}  # the renderers' title slot; the title is replaced below
    md = render_markdown(head, secs, figure_dir=out / "figures")
    md = md.replace("# Benchmark report (interpretability)", "# m3bert analyze: interpretability report", 1)
    html = render_html(head, secs)
    html = html.replace("<title>m3bert benchmark</title>", "<title>m3bert analyze</title>", 1)
    html = html.replace("<h1>Benchmark report (interpretability)</h1>", "<h1>m3bert analyze: interpretability report</h1>", 1)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", html)
    return {"markdown": out / "report.md", "html": out / "report.html"}


def demo_rho_rows(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The demo's comparison table: per descriptor group, best |r| (and bound) of each analysed model,
    of its random twin, the probe R^2 and the paper's statement. ``results``: display name -> analysis."""
    first = next(iter(results.values()))
    groups = list(dict.fromkeys(first["descriptors"]["groups"]))
    headers = ["descriptor", "paper"]
    for name in results:
        headers += [f"{name} |r| (bound)", f"{name} random |r|", f"{name} probe R^2"]
    rows = []
    for g in groups:
        row: list[Any] = [g, PAPER.get(g, (None, "–"))[1]]
        for res in results.values():
            model = next(iter(res["models"]))
            v = verdict(res, model, g)
            row += [f"{_n(v['abs_r'])} ({_n(v['abs_lower'])}){' *' if v['encoded'] else ''}",
                    v.get("random_abs_r"), v["probe_r2"]]
        rows.append(row)
    return headers, rows
