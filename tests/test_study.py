"""`bnas study`: searches, random cells and published cells trained alike, tables and report, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bnas.cli import main
from bnas.errors import ConfigError
from bnas.genotype import get_genotype, sample_genotype
from bnas.random_search import candidates
from bnas.study import StudySpec, plan, run_study
from bnas.study_report import bootstrap_diff, summarise

pytestmark = pytest.mark.usefixtures("one_thread")

# the issue's form, verbatim
ISSUE = {"dataset": "synthetic", "methods": ["clr", "random"], "seeds": [0, 1], "random_cells": 2,
         "published": ["BNASv2_CLR_v1"], "search": {"epochs": 1, "init_channels": 4},
         "train": {"epochs": 1, "init_channels": 4}}  # fmt: skip
TINY_SEARCH = dict(synthetic_size=32, batch_size=8, eval_every=0, quiet=True, device="cpu", random_candidates=2,
                   log_every=0)  # fmt: skip
TINY_TRAIN = dict(synthetic_size=32, batch_size=8, eval_batch_size=16, layers=2, enhance_cells=1, quiet=True,
                  device="cpu", log_every=0)  # fmt: skip


def tiny(config: dict) -> dict:
    """The config with the smallest sizes (the same form: only search/train options are added)."""
    return {**config, "search": {**config["search"], **TINY_SEARCH}, "train": {**config["train"], **TINY_TRAIN}}


def write(tmp_path: Path, config: object, name: str = "study.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def test_the_issues_form_and_method_objects_plan_every_run(tmp_path, capsys):
    config = {**ISSUE, "methods": [*ISSUE["methods"], {"name": "bnas-d-p2", "method": "bnas-d", "clr_power": 2}]}
    out = tmp_path / "s"
    assert main(["study", "--config", str(write(tmp_path, config)), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # 3 methods x 2 seeds searched and trained, 2 random cells, 1 published genotype x 2 seeds
    assert len(lines) == 6 + 6 + 2 + 2 and all("(new)" in line for line in lines)
    assert "search bnas-d-p2-s1 (method bnas-d, clr_power 2, seed 1)" in "\n".join(lines)
    assert not out.exists()  # a dry run writes nothing
    spec = StudySpec.from_json(config)
    assert spec.search_config(spec.methods[2], 1, tmp_path).clr_power == 2
    runs = plan(spec, out)
    assert [r.seed for r in runs if r.kind == "random"] == [0, 1]  # random cell i: trained with seed i % len(seeds)
    assert {r.path.name for r in runs if r.kind == "published"} == {"BNASv2_CLR_v1-s0", "BNASv2_CLR_v1-s1"}


def test_a_study_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "--config", str(write(tmp_path, tiny(ISSUE))), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    names = ["clr-s0", "clr-s1", "random-s0", "random-s1", "random-cell-0", "random-cell-1", "BNASv2_CLR_v1-s0",
             "BNASv2_CLR_v1-s1"]  # fmt: skip
    assert [r["candidate"] for r in rows] == names
    for r in rows:
        assert 0.0 <= float(r["test_acc"]) <= 1.0 and int(r["parameters"]) > 0 and int(r["macs"]) > 0
        assert (r["search_s"] != "") == (r["kind"] == "searched") and float(r["train_s"]) > 0
        assert len(r["param_free"].split("/")) == 2
        res = json.loads((out / "train" / r["candidate"] / "results.json").read_text())
        assert res["final_epoch"]["test_top1"] == pytest.approx(float(r["test_acc"]))
    # every training got the same options; only the genotype, the seed and the directory differ
    configs = {n: json.loads((out / "train" / n / "config.json").read_text()) for n in names}
    own = {"genotype", "genotype_json", "seed", "out", "parameters", "macs", "environment", "runtime"}
    options = [{k: v for k, v in c.items() if k not in own} for c in configs.values()]
    assert all(o == options[0] for o in options)
    assert [configs[n]["seed"] for n in names] == [0, 1, 0, 1, 0, 1, 0, 1]
    for n in ("clr-s1", "random-s0"):  # a searched cell is its search's genotype
        assert configs[n]["genotype_json"] == get_genotype(str(out / "search" / n)).to_json()
    assert configs["random-cell-1"]["genotype_json"] == sample_genotype("bcnn", 50_001).to_json()
    drawn = {json.dumps(configs[f"random-cell-{i}"]["genotype_json"]) for i in (0, 1)}
    scored = {json.dumps(g.to_json()) for s in (0, 1) for g in candidates("bcnn", s, 2)}
    assert not drawn & scored  # the random cells are never what a random search scored
    assert configs["BNASv2_CLR_v1-s0"]["genotype_json"] == get_genotype("BNASv2_CLR_v1").to_json()
    with open(out / "summary.csv") as f:
        summary = {r["group"]: r for r in csv.DictReader(f)}
    assert list(summary) == ["clr", "random", "random-cells", "BNASv2_CLR_v1"]
    assert summary["random-cells"]["diff"] == "" and summary["clr"]["n"] == "2"
    assert float(summary["clr"]["ci_low"]) <= float(summary["clr"]["diff"]) <= float(summary["clr"]["ci_high"])
    md = (out / "results.md").read_text()
    assert "| clr-s0 | clr | 0 |" in md and "mean - random cells (95% CI)" in md and "| clr-s0 |" in printed
    page = (out / "report.html").read_text()
    for png in ("accuracy", "accuracy_vs_parameters", "parameter_free", "op_margin", "grad_consistency"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000 and f"plots/{png}.png" in page
    collapse = json.loads((out / "results.json").read_text())["collapse"]
    assert set(collapse["clr"]["0"][-1]["arch_grad_consistency"]) == {"alpha_conv", "alpha_enh"}
    assert collapse["random"]["0"][-1]["arch_grad_consistency"] is None  # random search takes no gradient steps
    assert set(collapse) == {"clr", "random"} and set(collapse["clr"]) == {"0", "1"}
    assert collapse["clr"]["0"][0]["epoch"] == 1 and set(collapse["clr"]["0"][0]["parameter_free"]) == {"conv", "enh"}


class _Killed(Exception):
    pass


def _mtimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


def test_a_killed_study_resumes_without_redoing_finished_runs(tmp_path, capsys):
    config = tiny({**ISSUE, "methods": ["clr"], "seeds": [0], "random_cells": 1})
    spec, out = StudySpec.from_json(config), tmp_path / "study"
    done = []

    def kill_after_two(run):
        done.append(run.name)
        if len(done) == 2:
            raise _Killed

    with pytest.raises(_Killed):
        run_study(spec, out, after_run=kill_after_two)
    finished = [out / "search" / "clr-s0" / f for f in ("summary.json", "checkpoint.pt", "genotype.json")]
    finished += [out / "train" / "clr-s0" / f for f in ("results.json", "checkpoint.pt", "metrics.jsonl")]
    before = _mtimes(finished)
    assert not (out / "train" / "random-cell-0").exists() and not (out / "results.csv").exists()
    capsys.readouterr()

    run_study(StudySpec.from_json(config), out)  # the same command again
    printed = capsys.readouterr().out
    assert printed.count("finished, kept") == 2 and printed.count("starting") == 2
    assert _mtimes(finished) == before
    with open(out / "results.csv") as f:
        rows = {r["candidate"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["clr-s0", "random-cell-0", "BNASv2_CLR_v1-s0"]

    # a half-finished training (killed after its last checkpoint, before results.json) resumes from it
    half = out / "train" / "random-cell-0"
    (half / "results.json").unlink()
    (half / "summary.json").unlink()
    others = _mtimes([*finished, out / "train" / "BNASv2_CLR_v1-s0" / "results.json", half / "checkpoint.pt"])
    run_study(StudySpec.from_json(config), out)
    printed = capsys.readouterr().out
    assert "train random-cell-0 (a random cell, seed 0): resuming from its checkpoint" in printed
    assert printed.count("finished, kept") == 3
    assert _mtimes(list(others)) == others  # the checkpoint is read, not rewritten; nothing else is touched
    assert len([line for line in (half / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line]) >= 1
    res = json.loads((half / "results.json").read_text())
    assert res["final_epoch"]["test_top1"] == pytest.approx(float(rows["random-cell-0"]["test_acc"]))

    # another config for the same directory is refused in one sentence
    other = write(tmp_path, {**config, "seeds": [0, 1]}, "other.json")
    assert main(["study", "--config", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a study with a different config (seeds differ)" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "config, message",
    [
        ({**ISSUE, "datset": "synthetic"}, "unknown key 'datset' (did you mean dataset"),
        ({k: v for k, v in ISSUE.items() if k != "seeds"}, "missing key 'seeds'"),
        ({**ISSUE, "methods": ["clrr"]}, "unknown method 'clrr' (did you mean clr"),
        ({**ISSUE, "methods": [{"name": "p2", "method": "bnas-d", "clr_pow": 2}]}, "unknown option 'clr_pow'"),
        ({**ISSUE, "search": {"epoch": 1}}, "search has unknown option 'epoch' (did you mean epochs"),
        ({**ISSUE, "train": {"seed": 3}}, "train option 'seed' is set by the study itself"),
        # a study file names its keys (the library's arguments), not the command line's flags
        ({**ISSUE, "train": {"epochs": 0}}, "train: epochs must be at least 1"),
        ({**ISSUE, "search": {"batch_size": "big"}}, "method clr: batch_size must be a whole number"),
        ({**ISSUE, "published": ["BNASv2_CLR_v3"]}, "published genotype 'BNASv2_CLR_v3' is not bundled"),
        ({**ISSUE, "seeds": [0, 0]}, "seeds must be distinct whole numbers"),
        ({**ISSUE, "random_cells": -1}, "random_cells must be a whole number of at least 0"),
        ({**ISSUE, "methods": ["clr", {"name": "clr", "method": "clr"}]}, "the candidate name 'clr' appears twice"),
        ([1, 2], "must hold a JSON object"),
    ],
)
def test_bad_study_files_are_one_sentence(tmp_path, capsys, config, message):
    assert main(["study", "--config", str(write(tmp_path, config)), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnas: error: study file ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()


def test_unreadable_study_files_and_foreign_directories(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["study", "--config", str(tmp_path / "bad.json"), "--out", str(tmp_path / "s")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert main(["study", "--config", str(tmp_path / "none.json"), "--out", str(tmp_path / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "checkpoint.pt").write_text("x")
    assert main(["study", "--config", str(write(tmp_path, ISSUE)), "--out", str(foreign)]) == 2
    assert "holds no study (no study.json)" in capsys.readouterr().err


def test_summary_and_bootstrap_are_seeded():
    rows = [{"group": g, "kind": k, "test_acc": a} for g, k, a in
            [("clr", "searched", 0.6), ("clr", "searched", 0.7), ("random-cells", "random", 0.5),
             ("random-cells", "random", 0.4), ("random-cells", "random", 0.45)]]  # fmt: skip
    s = {r["group"]: r for r in summarise(rows, 2000, 0)}
    assert s["clr"]["mean"] == pytest.approx(0.65) and s["clr"]["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert s["clr"]["diff"] == pytest.approx(0.2) and s["clr"]["ci_low"] < 0.2 < s["clr"]["ci_high"]
    assert s["clr"]["ci_low"] > 0  # every resample of the searched cells beats every one of the random cells
    assert s["random-cells"]["diff"] is None
    one = summarise([{"group": "clr", "kind": "searched", "test_acc": 0.6}, {"group": "random-cells", "kind": "random",
                     "test_acc": 0.5}])  # fmt: skip
    assert one[0]["diff"] == pytest.approx(0.1) and one[0]["ci_low"] is None and one[0]["std"] is None
    assert bootstrap_diff([0.6, 0.7], [0.5, 0.4], 500, 3) == bootstrap_diff([0.6, 0.7], [0.5, 0.4], 500, 3)
    with pytest.raises(ConfigError):
        StudySpec.from_json({**ISSUE, "bootstrap_samples": 10})


def test_parameter_free_plot_has_whole_epochs_and_says_1_seed():
    from bnas.study_report import StudyResults, collapse_figure

    one = {"clr": {"0": [{"epoch": 1, "parameter_free": {"conv": 2, "enh": 3}}]}}
    fig = collapse_figure(StudyResults(rows=[], summary=[], collapse=one))
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["clr (mean of 1 seed)"]
    two = {"clr": {"0": one["clr"]["0"], "1": one["clr"]["0"]}}
    fig = collapse_figure(StudyResults(rows=[], summary=[], collapse=two))
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "clr (mean of 2 seeds)"


def test_the_demo_study_plans_a_search_and_two_trainings_alike(tmp_path, capsys):
    demo = Path(__file__).parent.parent / "configs" / "demo-study.json"
    assert main(["study", "--config", str(demo), "--out", str(tmp_path / "demo"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0].split("] ")[1] for line in lines] == [
        "search bnas-d-sum3-s0", "train bnas-d-sum3-s0", "train random-cell-0"
    ]  # fmt: skip
    spec = StudySpec.load(demo)
    assert spec.train["budget"] == "90s" and spec.search["budget"] == "3m" and spec.search["subset"] == 4000
    # docs/study-budget.md's setting: a summed architecture rate of 3 after a weight warm-up (15 of the preset's 50
    # epochs: under a budget, the first 30% of the search, as 3 of the study's 10 epochs)
    (method,) = spec.methods
    assert method.method == "bnas-d"
    assert method.options == {"arch_lr": "auto", "arch_lr_sum": 3.0, "arch_start_epoch": 15}


def test_the_fashion_mnist_study_plans_every_method_seed_random_and_published_cell(tmp_path, capsys):
    """configs/study-fashion-mnist.json (docs/study-fashion-mnist.md): 9 searches and 21 trainings, alike."""
    config = Path(__file__).parent.parent / "configs" / "study-fashion-mnist.json"
    assert main(["study", "--config", str(config), "--out", str(tmp_path / "fm"), "--dry-run"]) == 0
    names = [line.split(" (")[0].split("] ")[1] for line in capsys.readouterr().out.splitlines()]
    searches = [n for n in names if n.startswith("search ")]
    trainings = [n for n in names if n.startswith("train ")]
    assert len(searches) == 9 and {n.split()[1].rsplit("-s", 1)[0] for n in searches} == {"clr", "bnas-d", "random"}
    assert len(trainings) == 9 + 6 + 2 * 3
    assert {"train random-cell-5", "train BNASv2_CLR_v1-s2", "train BNASv2_PC_cifar_v1-s0"} <= set(trainings)
    spec = StudySpec.load(config)
    assert spec.train["recipe"] == "fast" and spec.train["budget"] == "3m" and "epochs" not in spec.train
