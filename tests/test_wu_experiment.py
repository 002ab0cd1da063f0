"""Wu et al. (2021)'s worker ablation (``m3bert wu-ablation``): plan, claims and verdicts on fabricated
numbers, the report, and the tiny preset end to end on the tiny built-in corpus."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from m3bert.app import wu_experiment as W
from m3bert.core.errors import ConfigError

TASKS = ("dance", "instrument", "style")


def test_plan_is_every_cell_once_equal_before_reweighted():
    cfg = W.experiment_config("small", {"seeds": 3})
    cells = W.plan(cfg)
    assert len(cells) == 5 * 2 * 3 and len({c.name for c in cells}) == len(cells)
    assert {(c.worker_set, c.weighting, c.seed) for c in cells} == set(itertools.product(W.WORKER_SETS, W.WEIGHTINGS, (0, 1, 2)))
    for ws, s in itertools.product(W.WORKER_SETS, range(3)):
        order = [c.weighting for c in cells if c.worker_set == ws and c.seed == s]
        assert order == ["equal", "reweighted"]
    assert W.Cell("WLP+MCT", "reweighted", 1).workers == "W,L,P,M,C,T"
    with pytest.raises(ConfigError, match="worker_sets"):
        W.experiment_config("small", {"worker_sets": ("WLP", "WLP+X")})
    with pytest.raises(ConfigError, match="preset"):
        W.experiment_config("huge")


def test_verdict_reads_the_95_ci_over_seeds():
    assert W.verdict([1.0, 1.2, 0.9], +1)[0] == "holds"
    assert W.verdict([1.0, 1.2, 0.9], -1)[0] == "does not hold"
    assert W.verdict([-1.0, -1.2, -0.9], -1)[0] == "holds"
    assert W.verdict([1.0, -1.0, 0.3], +1)[0] == "within noise"
    assert W.verdict([0.0, 0.0], +1)[0] == "within noise"  # no difference at all: the interval is {0}
    assert W.verdict([5.0], +1) == ("untested", None)  # one seed: no interval
    v, s = W.verdict([1.0, 3.0], +1)  # t(1) = 12.71: 2 +- 12.71 -> within noise
    assert v == "within noise" and s["ci_low"] == pytest.approx(2 - 12.706, abs=1e-3)


def fabricate(effects: dict[tuple[str, str], float], *, rw_gain: float = 0.0, seeds=(0, 1, 2), noise=0.002, base=0.5):
    """Scores = base + effect of the added workers on a task (+ rw_gain when re-weighted) + seeded noise."""
    r = np.random.default_rng(0)
    scores = {}
    for ws, w, t, s in itertools.product(W.WORKER_SETS, W.WEIGHTINGS, TASKS, seeds):
        extra = ws.removeprefix("WLP").removeprefix("+")
        v = base + sum(effects.get((x, t), 0.0) for x in extra) + (rw_gain if w == "reweighted" else 0.0)
        scores[(ws, w, t, s)] = v + noise * r.standard_normal()
    return scores


PAPER_LIKE = {("T", "dance"): 0.07, ("T", "instrument"): 0.02, ("T", "style"): 0.02,
              ("M", "dance"): -0.01, ("M", "instrument"): 0.03, ("M", "style"): 0.02,
              ("C", "dance"): 0.0, ("C", "instrument"): -0.03, ("C", "style"): -0.01}
EQ = {"W": 0.3, "L": 5.0, "P": 0.8, "M": 0.5, "C": 0.2, "T": 0.04}
RW = {"W": 3.3, "L": 0.2, "P": 1.25, "M": 2.0, "C": 5.0, "T": 25.0}  # ~ the reciprocals of EQ
LOSSES = {("equal", s): {"losses": {**EQ, "T": 0.04 + 0.001 * s}, "weighted": {**EQ, "T": 0.04 + 0.001 * s}}
          for s in (0, 1, 2)}
LOSSES.update({("reweighted", s): {"losses": EQ, "weighted": {k: v * RW[k] * (1 + 0.01 * s * (k == "L")) for k, v in EQ.items()}}
               for s in (0, 1, 2)})


def _by_id(claims):
    return {c["id"]: c for c in claims}


def test_claims_hold_on_numbers_shaped_like_the_papers():
    claims = _by_id(W.evaluate_claims(fabricate(PAPER_LIKE, rw_gain=0.02), LOSSES, tasks=TASKS, seeds=(0, 1, 2)))
    assert len(claims) == 5 + 2 * len(W.FIG5)
    for cid in ("3a", "3b", "4a", "4b", "4c"):
        assert claims[cid]["verdict"] == "holds", claims[cid]
    for w in W.WEIGHTINGS:
        for cid in ("5a", "5b", "5c", "5d", "5e", "5f", "5g", "5h"):
            assert claims[f"{cid}-{w}"]["verdict"] == "holds", claims[f"{cid}-{w}"]
    # the numbers behind a verdict: 3a is exactly the re-weighting gain, 5h the relative gain of all workers on dance
    assert claims["3a"]["summary"]["mean"] == pytest.approx(0.02, abs=0.003)
    assert claims["5h-equal"]["summary"]["mean"] == pytest.approx(100 * 0.06 / 0.5, abs=1.5)
    assert claims["5h-equal"]["paper_value"] == "+14 %"
    assert claims["4b"]["per_seed"][0] == pytest.approx(math.log10(0.04 / 0.2))


def test_claims_fail_or_drown_when_the_numbers_say_so():
    opposite = {k: -v for k, v in PAPER_LIKE.items()}
    claims = _by_id(W.evaluate_claims(fabricate(opposite, rw_gain=-0.02), {}, tasks=TASKS, seeds=(0, 1, 2)))
    assert claims["3a"]["verdict"] == "does not hold" and claims["3b"]["verdict"] == "does not hold"
    assert claims["5d-equal"]["verdict"] == "does not hold" and claims["5h-reweighted"]["verdict"] == "does not hold"
    for cid in ("4a", "4b", "4c"):  # nothing logged: untested, with the reason
        assert claims[cid]["verdict"] == "untested" and "losses" in claims[cid]["reason"]
    noise_only = _by_id(W.evaluate_claims(fabricate({}, noise=0.02), {}, tasks=TASKS, seeds=(0, 1, 2)))
    assert {noise_only[f"{c}-equal"]["verdict"] for c in ("5c", "5f", "5g", "5h")} <= {"within noise"}


def test_claims_are_untested_when_the_plan_cannot_measure_them():
    scores = {k: v for k, v in fabricate(PAPER_LIKE).items() if k[0] != "WLP+T"}
    claims = _by_id(W.evaluate_claims(scores, LOSSES, tasks=TASKS, seeds=(0, 1, 2)))
    assert claims["5a-equal"]["verdict"] == "untested" and "WLP+T" in claims["5a-equal"]["reason"]
    assert claims["5c-equal"]["verdict"] == "holds"  # M is still measured
    one_task = _by_id(W.evaluate_claims(fabricate(PAPER_LIKE), LOSSES, tasks=("instrument",), seeds=(0, 1, 2)))
    assert one_task["3b"]["verdict"] == "untested" and "dance" in one_task["3b"]["reason"]
    assert one_task["5d-equal"]["verdict"] == "holds"
    one_seed = _by_id(W.evaluate_claims(fabricate(PAPER_LIKE, seeds=(0,)), LOSSES, tasks=TASKS, seeds=(0,)))
    assert all(c["verdict"] == "untested" and "2" in c["reason"] for c in one_seed.values())


def fabricated_result(seeds=(0, 1, 2)):
    cfg = W.experiment_config("small", {"seeds": len(seeds)})
    result = {"corpus": "/c", "config": W.to_dict(cfg), "seeds": list(seeds), "n_parameters": 1234,
              "runs": [{"name": c.name} for c in W.plan(cfg)], "pretrain_store": {"n_clips": 10, "audio_s": 60.0},
              "comparison": {"M2BERT": {"dance": {"mean": 0.4, "half_width": 0.01}}},
              "timings": {"inputs_s": 1.0, "pretrain_s": 2.0, "bench_s": 3.0, "total_s": 6.0}}
    result.update(W.analyse(cfg, fabricate(PAPER_LIKE, rw_gain=0.02, seeds=seeds), LOSSES, seeds))
    return result


def test_report_prints_every_claim_with_the_numbers_of_its_verdict():
    result = fabricated_result()
    md = W.render_report(result)
    rows = [line for line in md.splitlines() if line.startswith("| ") and line.count("|") == 9 and "the paper says" not in line]
    assert len(rows) == len(result["claims"])
    for claim, line in zip(result["claims"], rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == claim["id"] and cells[-1].startswith(claim["verdict"])
        s = claim["summary"]
        assert cells[6] == f"{s['mean']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"
        assert W.verdict(list(claim["per_seed"].values()), claim["direction"])[0] == claim["verdict"]
    assert "| WLP+MCT | reweighted |" in md and "| M2BERT |" in md and "Fig. 4" in md
    section = W.report_section(result, png=W.ablation_png(result))
    d = section.to_dict()
    assert d["table"]["rows"][0][0] == "3a" and len(d["figures"]) == 1
    assert base64_png(d["figures"][0]["png_base64"])


def base64_png(b64: str) -> bool:
    import base64

    return base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # 20 pre-training runs + 21 encoders probed: ~65 s at load average 11 on 2 cores, ~25 s idle
def test_tiny_preset_end_to_end_claims_follow_from_the_numbers_and_resume_skips(tiny_corpus, tmp_path):
    import json

    from m3bert.pretrain.workers import reweight_from_log
    from m3bert.tasks import metrics as M

    cfg = W.experiment_config("tiny")
    out = tmp_path / "wu"
    res = W.run_wu_experiment(tiny_corpus, out, config=cfg)
    cells = W.plan(cfg)
    assert [r["name"] for r in res["runs"]] == [c.name for c in cells] and len(cells) == 20
    for c in cells:
        assert (out / "runs" / c.name / "checkpoints" / "last" / "model.safetensors").is_file()

    # a re-weighted run trained with the reciprocals of its equal twin's first validations (Wu sec. 3.3)
    rw = json.loads((out / "runs" / "WLP-T-reweighted-s1" / "run.json").read_text())["config"]["objective"]
    assert rw["weighting"] == "reweight" and set(rw["reweight_losses"]) == {"W", "L", "P", "T"}
    n1 = min(cfg.reweight_epochs * res["steps_per_epoch"], cfg.steps)  # the first reweight_epochs epochs
    calib = reweight_from_log(out / "runs" / "WLP-T-equal-s1", ["W", "L", "P", "T"], max_step=n1, normalize=False)
    assert rw["reweight_losses"] == pytest.approx(calib["mean_val_losses"])

    # every score is the mean macro-F1 over the probe trials in the benchmark's results.json
    bench = json.loads((out / "bench" / "results.json").read_text())
    assert bench["protocol"]["name"] == "wu" and bench["seeds"] == [0, 1]
    runs = {(r["representation"], r["task"]): r["runs"] for r in bench["results"]}
    scores = {}
    for row in res["scores"]:
        name = W.Cell(row["worker_set"], row["weighting"], row["seed"]).name
        assert row["macro_f1"] == pytest.approx(np.mean([r["metrics"]["macro_f1"] for r in runs[(name, f"builtin-{row['task']}")]]))
        scores[(row["worker_set"], row["weighting"], row["task"], row["seed"])] = row["macro_f1"]
    assert len(scores) == 20 * 3

    # the claims table: every claim once (Fig. 5 claims once per weighting), each verdict the one its numbers give
    ids = [c["id"] for c in res["claims"]]
    assert ids == ["3a", "3b", "4a", "4b", "4c"] + [f"{f[0]}-{w}" for w in W.WEIGHTINGS for f in W.FIG5]
    for c in res["claims"]:
        assert c["verdict"] in W.VERDICTS and c["quote"] and c["test"]
        if c["verdict"] == "untested":
            assert c["reason"]
            continue
        values = [c["per_seed"][str(s)] if str(s) in c["per_seed"] else c["per_seed"][s] for s in res["seeds"]]
        assert W.verdict(values, c["direction"])[0] == c["verdict"]
        assert c["summary"]["mean"] == pytest.approx(M.summarize(values)["mean"])
    losses = {(c.weighting, c.seed): W.worker_losses(out / "runs" / c.name) for c in cells if c.worker_set == "WLP+MCT"}
    again = W.evaluate_claims(scores, losses, tasks=cfg.tasks, seeds=res["seeds"])
    assert [c["verdict"] for c in again] == [c["verdict"] for c in res["claims"]]
    assert set(res["worker_losses"]) == {"WLP+MCT equal s0", "WLP+MCT reweighted s0", "WLP+MCT equal s1",
                                         "WLP+MCT reweighted s1"}

    md = (out / "report.md").read_text()
    for c in res["claims"]:
        assert f"| {c['id']} | {c['figure']} |" in md
    assert (out / "wu_ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["claims"] == json.loads(json.dumps(res["claims"]))

    # rerun: every finished run is skipped and the probes are reused, so the result is the same
    stamp = {c.name: (out / "runs" / c.name / "checkpoints" / "last" / "model.safetensors").stat().st_mtime_ns for c in cells}
    res2 = W.run_wu_experiment(tiny_corpus, out, config=cfg)
    assert {c.name: (out / "runs" / c.name / "checkpoints" / "last" / "model.safetensors").stat().st_mtime_ns
            for c in cells} == stamp
    assert res2["claims"] == res["claims"] and res2["runs"] == res["runs"]
