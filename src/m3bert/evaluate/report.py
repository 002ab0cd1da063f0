"""Benchmark report: ``results.json`` (every number), ``report.md`` and a self-contained ``report.html``.

``write_report(results, out_dir, sections=[...])`` writes ``results.json`` first and renders both
reports *from the file it just wrote* (re-read from disk), so a report can never show a number
that results.json does not hold. Plots are drawn on plain matplotlib figures (no pyplot state, no
GUI backend: PNG goes through Agg); the HTML embeds them as base64 PNG, the Markdown links the
same PNGs under ``figures/``.

Extra sections (the demo's masking ablation, a training curve, ...) are :class:`Section` objects:
a title, Markdown-ish text, an optional table and optional figures. They are stored in
``results.json["sections"]`` (figures as base64 PNG) and rendered after the standard sections::

    write_report(results, "out/report", sections=[
        Section("Masking ablation", text="Pre-trained 2k steps per policy.",
                table=Table(["policy", "accuracy"], [["CFM", 0.61], ["CCM", 0.58]]),
                figures=[Figure("loss curves", png_bytes)])])

Standard sections: the results per setting (and the settings side by side when a run has several),
the taxonomy levels, which layer won, the test-set power (minimum detectable difference per
task), the paired comparisons asked of the run, the tasks, the selected probes, failures and
provenance.

Longer than 500 lines because every table and figure of results.json is rendered here, in one
place, from the file itself (splitting it would put the renderers of one file format in two).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import matplotlib.figure
import matplotlib.pyplot as plt

from m3bert.core.errors import DataError
from m3bert.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

DECIMALS = 3  # digits shown for metric values in tables


@dataclass
class Table:
    """A small table: header names and rows of cells (str or numbers; floats get DECIMALS digits)."""

    headers: list[str]  # column names
    rows: list[list[Any]]  # one list of cells per row, len(headers) each


@dataclass
class Figure:
    """A PNG image with a caption."""

    caption: str  # shown under the image
    png: bytes  # PNG file content (e.g. from figure_png(fig))


@dataclass
class Section:
    """An extra report section rendered after the standard ones (``lead=True``: before them)."""

    title: str  # section heading
    text: str = ""  # paragraphs (blank-line separated); Markdown in report.md, escaped text in HTML
    table: Table | None = None  # optional table
    figures: list[Figure] = field(default_factory=list)  # optional images
    lead: bool = False  # rendered before the standard sections (a summary a reader needs first)

    def to_dict(self) -> dict[str, Any]:
        for row in (self.table.rows if self.table else []):
            if len(row) != len(self.table.headers):
                raise DataError(f"section {self.title!r}: a table row has {len(row)} cells, expected {len(self.table.headers)}")
        return {"title": self.title, "text": self.text,
                "table": {"headers": list(self.table.headers), "rows": [list(r) for r in self.table.rows]} if self.table else None,
                "figures": [{"caption": f.caption, "png_base64": base64.b64encode(f.png).decode("ascii")} for f in self.figures],
                **({"lead": True} if self.lead else {})}


def figure_png(fig: Any, *, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes, then closed (a pyplot figure is released; others need no closing)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# numbers -> text


def fmt_number(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{DECIMALS}f}"


def fmt_summary(s: dict[str, Any]) -> str:
    """``mean ± half-width of the 95 % CI`` (just the mean with one seed)."""
    if s.get("half_width") is None:
        return fmt_number(s["mean"])
    return f"{fmt_number(s['mean'])} ± {fmt_number(s['half_width'])}"


def _columns(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(task, metric key, column label); "score" when a task averages several metrics (MARBLE)."""
    cols = []
    for t in res["tasks"]:
        for m in t["metrics"]:
            cols.append((t["name"], m, f"{t['name']} {m}"))
        if len(t["score_metrics"]) > 1:
            cols.append((t["name"], "score", f"{t['name']} score"))
    return cols


def setting_names(res: dict[str, Any]) -> list[str | None]:
    """The settings of a run in order (``[None]`` for results written before settings existed)."""
    return [s["name"] for s in res.get("settings") or []] or [None]


def _in(row: dict[str, Any], setting: str | None) -> bool:
    return setting is None or row.get("setting") in (None, setting)


def _row(res: dict[str, Any], rep: str, task: str, setting: str | None = None) -> dict[str, Any] | None:
    for r in res["results"]:
        if r["representation"] == rep and r["task"] == task and _in(r, setting):
            return r
    return None


def _noise(res: dict[str, Any], rep: str, task: str, setting: str | None = None) -> dict[str, Any] | None:
    for c in res.get("comparisons", []):
        if c["representation"] == rep and c["task"] == task and _in(c, setting):
            return c
    return None


def main_table(res: dict[str, Any], setting: str | None = None) -> Table:
    """Rows: representations; columns: task metrics, cells ``mean ± CI`` with best / within-noise marks.
    ``setting``: whose rows (default the run's first setting)."""
    setting = setting if setting is not None else setting_names(res)[0]
    cols = _columns(res)
    rows = []
    for rep in [r["name"] for r in res["representations"]]:
        row: list[Any] = [rep]
        for task, metric, _ in cols:
            r = _row(res, rep, task, setting)
            if r is None or not r["runs"]:
                row.append("–")
                continue
            s = r["summary"]["score"] if metric == "score" else r["summary"]["metrics"][metric]
            cell = fmt_summary(s)
            c = _noise(res, rep, task, setting)
            primary = metric == ("score" if len([t for t in res["tasks"] if t["name"] == task][0]["score_metrics"]) > 1
                                 else [t for t in res["tasks"] if t["name"] == task][0]["score_metrics"][0])
            if c is not None and primary:
                if c["is_best"]:
                    cell = f"**{cell}**"
                elif c["within_noise"]:
                    cell = f"{cell} ≈"
            row.append(cell)
        rows.append(row)
    return Table(["representation"] + [c[2] for c in cols], rows)


def taxonomy_table(res: dict[str, Any], setting: str | None = None) -> Table:
    setting = setting if setting is not None else setting_names(res)[0]
    levels = list(dict.fromkeys(t["level"] for t in res.get("taxonomy", [])))
    rows = []
    for rep in [r["name"] for r in res["representations"]]:
        row: list[Any] = [rep]
        for lev in levels:
            hit = [t for t in res["taxonomy"] if t["representation"] == rep and t["level"] == lev and _in(t, setting)]
            row.append(fmt_summary(hit[0]["score"]) if hit else "–")
        rows.append(row)
    return Table(["representation"] + [f"{lev} (mean task score)" for lev in levels], rows)


def selection_table(res: dict[str, Any]) -> Table:
    """The probe chosen on validation per seed (the first fold's with k-fold); a setting column when several."""
    several = len(setting_names(res)) > 1
    rows = []
    for r in res["results"]:
        for run in r["runs"]:
            sel = run["selected"]
            lead = [r.get("setting")] if several else []
            if sel.get("predictor") == "chance":
                rows.append(lead + [r["representation"], r["task"], run["seed"], "chance", "–", "–", "–"])
                continue
            layer = sel.get("layer_name") or sel.get("layer")
            rows.append(lead + [r["representation"], r["task"], run["seed"], layer, sel.get("lr"), sel.get("best_epoch"),
                                sel.get("valid_score")])
    return Table((["setting"] if several else []) + ["representation", "task", "seed", "layer", "lr", "best epoch",
                                                      "valid score"], rows)


def _won(res: dict[str, Any], setting: str | None, rep: str, task: str) -> dict[str, Any] | None:
    for w in res.get("layer_selection", []):
        if w["representation"] == rep and w["task"] == task and _in(w, setting):
            return w
    return None


def won_label(w: dict[str, Any] | None) -> str:
    """``layer4 (3/3)``, ``weighted (2/3; top layer2 0.41)``; "–" when nothing was selected (chance)."""
    if w is None:
        return "–"
    out = f"{w['layer']} ({w['count']}/{w['n']}"
    if w["layer"] == "weighted" and w.get("top_layer"):
        out += f"; top {w['top_layer']} {w['weights'][w['top_layer']]:.2f}"
    return out + ")"


def settings_table(res: dict[str, Any]) -> Table:
    """Rows (task, representation); one column per setting: the task score ``mean ± CI`` and the layer
    that won; **bold** = best of the task in that setting."""
    names = setting_names(res)
    by_name = {s["name"]: s for s in res.get("settings") or []}
    rows = []
    for t in res["tasks"]:
        for rep in [r["name"] for r in res["representations"]]:
            row: list[Any] = [t["name"], rep]
            for sn in names:
                r = _row(res, rep, t["name"], sn)
                if r is None or not r["runs"]:
                    row.append("–")
                    continue
                cell = fmt_summary(r["summary"]["score"])
                c = _noise(res, rep, t["name"], sn)
                if c is not None and c["is_best"]:
                    cell = f"**{cell}**"
                w = _won(res, sn, rep, t["name"])
                row.append(cell + (f" [{won_label(w)}]" if w is not None else ""))
            rows.append(row)
    heads = [f"{sn} ({by_name[sn]['layers']}, {by_name[sn]['pooling']})" if sn in by_name else str(sn) for sn in names]
    return Table(["task", "representation"] + heads, rows)


def layer_table(res: dict[str, Any]) -> Table:
    """Which layer won per (setting, representation, task), with the weighted sums' mean weights."""
    rows = []
    for w in res.get("layer_selection", []):
        weights = ", ".join(f"{k} {v:.2f}" for k, v in (w.get("weights") or {}).items()) or "–"
        counts = ", ".join(f"{k} {v}" for k, v in w["counts"].items())
        rows.append([w.get("setting"), w["representation"], w["task"], w["layer"], f"{w['count']}/{w['n']}", counts, weights])
    return Table(["setting", "representation", "task", "layer won", "times", "all picks", "weighted-sum weights (mean)"], rows)


def power_table(res: dict[str, Any]) -> Table:
    """Per (task, setting): the test size and the minimum detectable difference (module power)."""
    rows = []
    for p in res.get("power", []):
        rows.append([p["task"], p.get("setting"), p["split"], p["n_test"], p["n_groups"], p["reference"], p["score"],
                     p["se"], p["mdd"], p.get("mdd_binomial"),
                     "–" if p["mdd"] is None else ("yes" if p["mdd"] <= 0.05 else "no")])
    return Table(["task", "setting", "split", "test clips", "test pieces", "reference", "score", "SE", "MDD",
                  "MDD (binomial)", "5 points detectable"], rows)


def pairs_table(res: dict[str, Any]) -> Table:
    rows = []
    for p in res.get("pairs", []):
        if p["decided"] is None:
            verdict = "n/a"
        elif p["decided"]:
            verdict = f"{p['a']} better" if p["difference"] > 0 else f"{p['b']} better"
        else:
            verdict = "not decided"
        rows.append([p["task"], p.get("setting"), p["a"], p["b"], p["n_test"], p["difference"],
                     f"[{fmt_number(p['ci_low'])}, {fmt_number(p['ci_high'])}]", p["p_value"], p["mdd"], verdict])
    return Table(["task", "setting", "a", "b", "test clips", "a - b", "95 % CI", "p", "MDD (paired)", "verdict"], rows)


def tasks_table(res: dict[str, Any]) -> Table:
    rows = []
    for t in res["tasks"]:
        n = t["n_clips"]
        used = sorted({r.get("split") for r in res["results"] if r["task"] == t["name"] and r.get("split")})
        rows.append([t["name"], t["taxonomy"], t["label_type"], len(t["classes"]), n["train"], n["valid"], n["test"],
                     t.get("split_source", "predefined"), ", ".join(used) or "–",
                     ", ".join(t["score_metrics"]), len(t["skipped"])])
    return Table(["task", "level", "labels", "classes", "train", "valid", "test", "task split", "split used", "score",
                  "skipped"], rows)


# ---------------------------------------------------------------------------------------------
# plots


def task_bars_png(res: dict[str, Any]) -> bytes:
    """One panel per task: the task score of each representation, error bars = 95 % CI."""
    tasks = [t["name"] for t in res["tasks"]]
    reps = [r["name"] for r in res["representations"]]
    settings = setting_names(res)
    width = 0.8 / len(settings)
    n_cols = min(3, max(1, len(tasks)))
    n_rows = math.ceil(len(tasks) / n_cols)
    fig = matplotlib.figure.Figure(figsize=(4.2 * n_cols, 2.8 * n_rows + 0.4))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    colors = matplotlib.colormaps["tab10"]
    for k, task in enumerate(tasks):
        ax = axes[k // n_cols][k % n_cols]
        for j, sn in enumerate(settings):
            means, errs = [], []
            for rep in reps:
                r = _row(res, rep, task, sn)
                s = r["summary"]["score"] if r and r["runs"] else None
                means.append(s["mean"] if s else float("nan"))
                errs.append((s["half_width"] or 0.0) if s else 0.0)
            xs = [i + (j - (len(settings) - 1) / 2) * width for i in range(len(reps))]
            ax.bar(xs, means, width=width, yerr=errs, capsize=3, label=sn if len(settings) > 1 else None,
                   color=[colors(i % 10) for i in range(len(reps))] if len(settings) == 1 else colors(j % 10))
        if len(settings) > 1 and k == 0:
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(reps)))
        ax.set_xticklabels(reps, rotation=30, ha="right", fontsize=8)
        score = [t for t in res["tasks"] if t["name"] == task][0]["score_metrics"]
        ax.set_title(f"{task}\n({' + '.join(score)})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for k in range(len(tasks), n_rows * n_cols):
        axes[k // n_cols][k % n_cols].axis("off")
    fig.suptitle(f"Task scores, protocol {res['protocol']['name']}, mean ± 95 % CI over {len(res['seeds'])} seed(s)"
                 + (" (one bar per setting)" if len(settings) > 1 else ""), fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def taxonomy_png(res: dict[str, Any]) -> bytes:
    """Mean task score per MARBLE taxonomy level, grouped by representation."""
    levels = list(dict.fromkeys(t["level"] for t in res.get("taxonomy", [])))
    reps = [r["name"] for r in res["representations"]]
    fig = matplotlib.figure.Figure(figsize=(max(4.5, 1.6 * len(levels) + 2), 3.2))
    ax = fig.subplots()
    width = 0.8 / max(1, len(reps))
    colors = matplotlib.colormaps["tab10"]
    for i, rep in enumerate(reps):
        xs, ms, es = [], [], []
        for j, lev in enumerate(levels):
            hit = [t for t in res["taxonomy"] if t["representation"] == rep and t["level"] == lev
                   and _in(t, setting_names(res)[0])]
            if hit:
                xs.append(j + (i - (len(reps) - 1) / 2) * width)
                ms.append(hit[0]["score"]["mean"])
                es.append(hit[0]["score"]["half_width"] or 0.0)
        ax.bar(xs, ms, width=width, yerr=es, capsize=2, label=rep, color=colors(i % 10))
    ax.set_xticks(range(len(levels)))
    ax.set_xticklabels(levels)
    ax.set_ylabel("mean task score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Per taxonomy level (MARBLE): mean of task scores, 95 % CI over seeds", fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


# ---------------------------------------------------------------------------------------------
# rendering


def _standard_sections(res: dict[str, Any]) -> list[dict[str, Any]]:
    p = res["protocol"]
    pr = p["probe"]
    intro = (f"Protocol **{p['name']}**: {p['description']}. Pooling `{p['pooling']}`, split `{p['split']}`; probe hidden "
             f"{pr['hidden']}, dropout {pr['dropout']}, batch {pr['batch_size'] or 'min(200, n)'}, lrs {pr['lrs']}, "
             f"layers `{pr['layers']}`, max {pr['max_epochs']} epochs. Seeds {res['seeds']}.\n\n"
             f"Cells: mean ± half-width of the 95 % t-interval over seeds. In each task's score column **bold** = best, "
             f"≈ = within noise of the best ({res['noise_rule']}).")
    names = setting_names(res)
    if res.get("protocol", {}).get("n_folds") and any(r.get("split") == "kfold" for r in res["results"]):
        intro += (f"\n\nSplit `kfold`: {p['n_folds']}-fold cross-validation by piece over every clip of the task (new "
                  "folds per seed, the same for every representation and setting; each probe selects on the next fold); "
                  "every clip is tested once per seed; each metric is computed per fold and averaged weighted by fold size "
                  "(for accuracy: the score of all out-of-fold predictions). A "
                  "representation trained on a task's labels (M3BERT on its enrichment tasks) has seen its train clips: "
                  "its k-fold numbers there are not held-out numbers.")
    secs = []
    if len(names) > 1:
        secs.append({"title": "Settings side by side", "text": intro + "\n\nOne column per setting (layers, pooling), on "
                     "the same features, seeds and splits. Cells: task score, mean ± 95 % CI over seeds, **bold** = best "
                     "of the task in that setting; in brackets the layer chosen on validation (most often over seeds and "
                     "folds) and how often.", "table": _table_dict(settings_table(res)), "figures": []})
    for sn in names:
        title = "Results" if len(names) == 1 else f"Results: setting {sn}"
        secs.append({"title": title, "text": intro if len(names) == 1 else f"Setting `{sn}`.",
                     "table": _table_dict(main_table(res, sn)),
                     "figures": [{"caption": "Per-task scores (error bars: 95 % CI)", "png": task_bars_png(res)}]
                     if sn == names[0] else []})
    if res.get("taxonomy"):
        secs.append({"title": "Per taxonomy level", "text": "Mean task score of the tasks at each MARBLE level, per seed, "
                     "then mean ± 95 % CI over seeds" + (f" (setting {names[0]})." if len(names) > 1 else "."),
                     "table": _table_dict(taxonomy_table(res)),
                     "figures": [{"caption": "Mean task score per taxonomy level", "png": taxonomy_png(res)}]})
    if res.get("layer_selection"):
        secs.append({"title": "Which layer won", "text": "Per setting, representation and task: the input the "
                     "validation score selected most often over seeds (and folds), how often, every pick, and for "
                     "weighted sums the mean softmax weight of each mixed layer.", "table": _table_dict(layer_table(res)),
                     "figures": []})
    if res.get("power"):
        secs.append({"title": "Test-set power: minimum detectable difference", "text": res.get("power_rule", ""),
                     "table": _table_dict(power_table(res)), "figures": []})
    if res.get("pairs"):
        secs.append({"title": "Paired comparisons on the test clips", "text": "a - b of the task score (mean over seeds) "
                     "on the clips both were tested on; 95 % CI and p from a paired bootstrap of whole test pieces; MDD = "
                     "2.802 x SE of the difference (alpha 0.05, 80 % power). 'not decided' = p >= 0.05.",
                     "table": _table_dict(pairs_table(res)), "figures": []})
    secs.append({"title": "Tasks", "text": "", "table": _table_dict(tasks_table(res)), "figures": []})
    secs.append({"title": "Selected probes", "text": "The probe (layer, learning rate) chosen on validation for each seed.",
                 "table": _table_dict(selection_table(res)), "figures": []})
    fails = [[r["representation"], r["task"], f["clip_id"], f["error"]] for r in res["results"] for f in r["failures"]]
    skipped = [[t["name"], s[0], s[1]] for t in res["tasks"] for s in t["skipped"]]
    if fails or skipped:
        text = f"{len(skipped)} item(s) skipped while loading tasks; {len(fails)} clip(s) failed to embed (dropped)."
        rows = [["(load)", t, i, why] for t, i, why in skipped] + fails
        secs.append({"title": "Skipped and failed items", "text": text,
                     "table": {"headers": ["representation", "task", "item", "reason"], "rows": rows[:200]}, "figures": []})
    v = res["versions"]
    secs.append({"title": "Provenance", "text": f"Created {res['created']} in {res.get('elapsed_s', '?')} s. Versions: "
                 + ", ".join(f"{k} {v[k]}" for k in v) + ".", "table": None, "figures": []})
    return secs


def _table_dict(t: Table) -> dict[str, Any]:
    return {"headers": list(t.headers), "rows": [list(r) for r in t.rows]}


def _md_table(t: dict[str, Any]) -> str:
    esc = lambda c: fmt_number(c).replace("|", "\\|")
    lines = ["| " + " | ".join(esc(h) for h in t["headers"]) + " |", "|" + "---|" * len(t["headers"])]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in t["rows"]]
    return "\n".join(lines)


def _html_table(t: dict[str, Any]) -> str:
    def cell(c: Any) -> str:
        s = html.escape(fmt_number(c))
        while s.count("**") >= 2:  # bold marks anywhere in the cell ("**0.61 ± 0.02** [layer3 (3/3)]")
            s = s.replace("**", "<b>", 1).replace("**", "</b>", 1)
        return s

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t["headers"])
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in t["rows"])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png_of(fig: dict[str, Any]) -> bytes:
    return fig["png"] if "png" in fig else base64.b64decode(fig["png_base64"])


def _title(res: dict[str, Any]) -> str:
    """``results["title"]`` when a caller set one (the demo), else the protocol's benchmark report."""
    return res.get("title") or f"Benchmark report ({res['protocol']['name']})"


def render_markdown(res: dict[str, Any], sections: list[dict[str, Any]], *, figure_dir: Path | None) -> str:
    out = [f"# {_title(res)}", ""]
    n_fig = 0
    for sec in sections:
        out += [f"## {sec['title']}", ""]
        if sec.get("text"):
            out += [sec["text"], ""]
        if sec.get("table"):
            out += [_md_table(sec["table"]), ""]
        for fig in sec.get("figures", []):
            n_fig += 1
            name = f"figure-{n_fig:02d}.png"
            if figure_dir is not None:
                atomic_write_bytes(figure_dir / name, _png_of(fig))
            out += [f"![{fig['caption']}](figures/{name})", "", f"*{fig['caption']}*", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}tr:nth-child(even){background:#fafafa}img{max-width:100%}figcaption{font-size:12px;color:#555}"""


def render_html(res: dict[str, Any], sections: list[dict[str, Any]]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>m3bert benchmark</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(_title(res))}</h1>"]
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec['title'])}</h2>")
        for para in (sec.get("text") or "").split("\n\n"):
            if para.strip():
                text = html.escape(para)
                while text.count("**") >= 2:
                    text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
                parts.append(f"<p>{text}</p>")
        if sec.get("table"):
            parts.append(_html_table(sec["table"]))
        for fig in sec.get("figures", []):
            b64 = base64.b64encode(_png_of(fig)).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(fig['caption'])}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(fig['caption'])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: dict[str, Any], out_dir: str | Path, *, sections: Sequence[Section] = ()) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` (+ ``figures/``) and ``report.html`` into ``out_dir``.

    ``sections`` are appended to ``results["sections"]`` (so they are in results.json too) and
    rendered after the standard sections (those with ``lead`` before them). Returns the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = dict(results)
    res["sections"] = list(results.get("sections", [])) + [s.to_dict() for s in sections]
    atomic_write_json(out / "results.json", res)
    loaded = read_json(out / "results.json")  # render from what is on disk, nothing else
    extra = loaded.get("sections", [])
    secs = [s for s in extra if s.get("lead")] + _standard_sections(loaded) + [s for s in extra if not s.get("lead")]
    md = render_markdown(loaded, secs, figure_dir=out / "figures")
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", render_html(loaded, secs))
    return {"results": out / "results.json", "markdown": out / "report.md", "html": out / "report.html"}


def summary_lines(res: dict[str, Any]) -> list[str]:
    """The main table as aligned plain text for the terminal."""
    t = main_table(res)
    cols = [[str(h) for h in t.headers]] + [[fmt_number(c).replace("**", "") for c in r] for r in t.rows]
    widths = [max(len(row[i]) for row in cols) for i in range(len(t.headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cols]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def load_results(path: str | Path) -> dict[str, Any]:
    res = read_json(path)
    if res.get("format") != "m3bert-bench-results":
        raise DataError(f"{path}: not an m3bert benchmark results file (format={res.get('format')!r})")
    return res
