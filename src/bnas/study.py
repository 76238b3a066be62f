"""`bnas study`: does the search beat random? Searches, random cells and published cells trained alike.

A study file names the data set, the methods (`bnas search` presets or option sets), the seeds, the number
of sampled random cells, the published genotypes, the search options and the training recipe and budget
that every candidate gets alike. Every search and every training is an ordinary run directory inside the
study directory:

  DIR/study.json                   the study's normalised config (a rerun with another config is refused)
  DIR/search/NAME-sSEED            one search per method and seed (seeded with the study seed)
  DIR/train/NAME-sSEED             the searched cell of that search, trained with the same seed
  DIR/train/random-cell-I          random cell I (`bnas genotype sample --seed 50000+I`), once, seed SEEDS[I % n]
  DIR/train/GROUP-I                cell I of a random-cell group (under its budget: study_budget.py)
  DIR/train/GENOTYPE-sSEED         a published genotype, trained once per seed
  DIR/genotypes/random-cell-I.json the random cells
  DIR/results.csv|md|json, DIR/summary.csv, DIR/plots/*.png, DIR/report.html

Fairness: every training gets the same options (the study's `train`: recipe, epochs or budget), only the
genotype and the seed differ, and the training seeds are the study's seeds for every kind of candidate.
Selection never looks at the test set: searches select on their architecture split, and only the final
epoch's test accuracy is reported.

Resume: rerunning the same command keeps finished runs (summary.json / results.json present), resumes a
half-finished one from its checkpoint and starts the missing ones.

Failures and workers (study_work.py): a run that fails is recorded with its sentence and retried up to
`retries` times, and the study goes on; several workers (`bnas study --workers N`, `bnas study --worker DIR`)
share a study directory, each run claimed by one of them through its run-directory lock.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BnasError, ConfigError, did_you_mean
from .jsonio import dumps, read_file
from .runs import atomic_write_text
from .study_budget import NAME_PATTERN, RandomGroup, budget_options, check_group, on_trained_network, random_groups
from .study_report import RANDOM

KEYS = ("dataset", "methods", "seeds", "random_cells", "published", "search", "train", "bootstrap_samples",
        "bootstrap_seed")  # fmt: skip
REQUIRED = ("dataset", "methods", "seeds")
# options the study sets itself, per run
SEARCH_OWN = ("method", "seed", "out", "dataset")
TRAIN_OWN = ("genotype", "seed", "out", "dataset")

# random cell I is `sample_genotype(space, RANDOM_CELL_SEEDS + I)`: never one of the candidates of a random search
# (search seed S scores sample_genotype(space, S * 100_003 + J), J < random_candidates), so the two baselines stay
# independent draws
RANDOM_CELL_SEEDS = 50_000


@dataclass(frozen=True)
class Method:
    """One searched method of a study: a `bnas search` preset and the options it changes."""

    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, **self.options}


@dataclass
class StudySpec:
    """A study file, validated: one sentence (ConfigError) for anything it cannot run."""

    dataset: str
    methods: list[Method]
    seeds: list[int]
    random_cells: int | list[dict[str, Any]] = 0  # a count, or groups (study_budget.py)
    published: list[str] = field(default_factory=list)
    search: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    bootstrap_samples: int = 10_000
    bootstrap_seed: int = 0
    groups: list[RandomGroup] = field(default_factory=list)  # the random cells, by group (study_budget.py)

    @classmethod
    def load(cls, path: str | Path) -> StudySpec:
        path = Path(path)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise ConfigError(f"study file {path} {what}; give a study JSON file")
        obj = read_file(path, "study file", ConfigError)
        return cls.from_json(obj, f"study file {path}")

    @classmethod
    def from_json(cls, obj: object, where: str = "study config") -> StudySpec:
        from .genotype import ZOO
        from .search import METHODS, SearchConfig
        from .train import TrainConfig

        def bad(msg: str) -> None:
            raise ConfigError(f"{where}: {msg}")

        if not isinstance(obj, dict):
            bad("must hold a JSON object with dataset, methods and seeds")
        unknown = [k for k in obj if k not in KEYS]
        if unknown:
            bad(f"unknown key {unknown[0]!r}{did_you_mean(unknown[0], KEYS)}; the keys are {', '.join(KEYS)}")
        missing = [k for k in REQUIRED if k not in obj]
        if missing:
            bad(f"missing key {missing[0]!r}")
        if not isinstance(obj["dataset"], str):
            bad(f"dataset must be a data set name, got {obj['dataset']!r}")
        seeds = obj["seeds"]
        if not isinstance(seeds, list) or not seeds:
            bad(f"seeds must be a non-empty list of whole numbers, got {seeds!r}")
        if not all(_whole(s) and 0 <= s < 2**32 for s in seeds) or len(set(seeds)) != len(seeds):
            bad(f"seeds must be distinct whole numbers in [0, 2^32), got {seeds!r}")
        for key, default, low in (("bootstrap_seed", 0, 0), ("bootstrap_samples", 10_000, 100)):
            value = obj.get(key, default)
            if not _whole(value) or not low <= value < 2**32:
                bad(f"{key} must be a whole number of at least {low}, got {value!r}")
        search_fields = {f.name for f in dataclasses.fields(SearchConfig)} - set(SEARCH_OWN)
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(TRAIN_OWN)
        search = _options(obj.get("search", {}), "search", search_fields, SEARCH_OWN, bad)
        train = _options(obj.get("train", {}), "train", train_fields, TRAIN_OWN, bad)
        methods_in = obj["methods"]
        if not isinstance(methods_in, list):
            bad(f"methods must be a list of method names or objects, got {methods_in!r}")
        methods: list[Method] = []
        for i, m in enumerate(methods_in):
            if isinstance(m, str):
                m = {"method": m}
            if not isinstance(m, dict):
                bad(f"methods[{i}] must be a method name or an object with name and method, got {m!r}")
            preset = m.get("method")
            if not isinstance(preset, str) or preset not in METHODS:
                hint = did_you_mean(preset, METHODS)
                bad(f"methods[{i}] has unknown method {preset!r}{hint}; choose {', '.join(METHODS)}")
            name = m.get("name", preset)
            if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name.startswith("random-cell"):
                bad(f"methods[{i}] name {name!r} must be letters, digits, '.', '_', '+' or '-' (not random-cell...)")
            opts = {k: v for k, v in m.items() if k not in ("name", "method")}
            methods.append(Method(name, preset, _options(opts, f"methods[{i}] ({name})", search_fields,
                                                         SEARCH_OWN, bad)))  # fmt: skip
        published = obj.get("published", [])
        if not isinstance(published, list):
            bad(f"published must be a list of bundled genotype names, got {published!r}")
        for g in published:
            if not isinstance(g, str) or g not in ZOO:
                bad(f"published genotype {g!r} is not bundled{did_you_mean(g, ZOO)}; see bnas genotype list")
        names = [m.name for m in methods] + list(published)
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            bad(f"the candidate name {dup!r} appears twice; give each method a distinct name")
        groups = random_groups(obj.get("random_cells", 0), methods, search, names, bad)
        if not names and not groups:
            bad("names no candidate: give methods, random_cells or published genotypes")
        spec = cls(obj["dataset"], methods, list(seeds), obj.get("random_cells", 0), list(published), search, train,
                   obj.get("bootstrap_samples", 10_000), obj.get("bootstrap_seed", 0), groups)  # fmt: skip
        spec.check(where)
        return spec

    def check(self, where: str) -> None:
        """Resolve every search configuration and the training of a cell of the space and of each published
        genotype: their own checks, as one sentence each (`out` "." only passes the check of the path)."""
        probe = "DARTS_V2" if self.space == "darts" else "BNASv2_CLR_v1"
        for g in dict.fromkeys([probe, *self.published]):
            _checked(f"{where}: train", lambda g=g: self.train_config(g, self.seeds[0], Path(".")))
        for m in self.methods:
            _checked(f"{where}: method {m.name}", lambda m=m: self.search_config(m, self.seeds[0], Path(".")))
        for group in self.groups:  # a budget nothing fits is refused before any run
            _checked(f"{where}: random cells {group.name}", lambda g=group: check_group(self, g))
        for m in self.methods:
            budget = RandomGroup(m.name, 1, 0, budget_options({**self.search, **m.options}))
            _checked(f"{where}: method {m.name}", lambda g=budget: check_group(self, g))

    @property
    def space(self) -> str:
        """The search space of the random cells (the study's search options decide)."""
        return self.search.get("space", "bcnn")

    def search_config(self, m: Method, seed: int, out: Path):
        from .search import SearchConfig

        opts = {**self.search, **m.options, "dataset": self.dataset, "seed": seed, "out": str(out)}
        if budget_options(opts):  # a budget is on the network the study trains (study_budget.py)
            opts = on_trained_network(opts, self.trained_config())
        return SearchConfig.resolve(m.method, **opts)

    def trained_config(self):
        """The training every cell of the space gets (its network's size: what budgets are on)."""
        return self.train_config("DARTS_V2" if self.space == "darts" else "BNASv2_CLR_v1", self.seeds[0], Path("."))

    def group(self, name: str) -> RandomGroup:
        return next(g for g in self.groups if g.name == name)

    def _train_options(self, genotype: str, seed: int, out: str) -> dict[str, Any]:
        return {**self.train, "dataset": self.dataset, "genotype": genotype, "seed": seed, "out": out}

    def train_config(self, genotype: str, seed: int, out: Path):
        from .train import TrainConfig

        return TrainConfig.resolve(**self._train_options(genotype, seed, str(out)))

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "methods": [m.to_json() for m in self.methods], "seeds": self.seeds,
            "random_cells": self.random_cells, "published": self.published, "search": self.search,
            "train": self.train, "bootstrap_samples": self.bootstrap_samples, "bootstrap_seed": self.bootstrap_seed,
        }  # fmt: skip


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked(where: str, check) -> Any:
    try:
        return check()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _options(opts: object, what: str, fields: set[str], own: tuple[str, ...], bad) -> dict[str, Any]:
    if not isinstance(opts, dict):
        bad(f"{what} must be a JSON object of options, got {opts!r}")
    out = {}
    for key, value in opts.items():
        k = key.replace("-", "_")
        if k in own:
            bad(f"{what} option {key!r} is set by the study itself; remove it")
        if k not in fields:
            bad(f"{what} has unknown option {key!r}{did_you_mean(k, fields)}")
        out[k] = value
    return out


# --- the plan --------------------------------------------------------------------------------------------


@dataclass
class PlannedRun:
    """One run of a study: a search, or the training of one candidate."""

    command: str  # search | train
    name: str  # the run directory's name
    group: str  # the method name, random-cells or the published genotype
    kind: str  # searched | random | published
    seed: int
    path: Path
    method: Method | None = None  # searches
    genotype: str = ""  # trainings: a search run directory, a random cell's file or a bundled name
    search: str = ""  # trainings of searched cells: the search's run name

    @property
    def done_file(self) -> str:
        return "summary.json" if self.command == "search" else "results.json"

    def state(self) -> str:
        if (self.path / self.done_file).exists():
            return "done"
        return "resume" if (self.path / "checkpoint.pt").exists() else "new"


def plan(spec: StudySpec, out: Path) -> list[PlannedRun]:
    """Every run of the study in order: the searches first, then the trainings."""
    runs: list[PlannedRun] = []
    for m in spec.methods:
        for s in spec.seeds:
            runs.append(PlannedRun("search", f"{m.name}-s{s}", m.name, "searched", s, out / "search" / f"{m.name}-s{s}",
                                   method=m))  # fmt: skip
    for m in spec.methods:
        for s in spec.seeds:
            name = f"{m.name}-s{s}"
            runs.append(PlannedRun("train", name, m.name, "searched", s, out / "train" / name,
                                   genotype=str(out / "search" / name), search=name))  # fmt: skip
    for group in spec.groups:
        for i in range(group.count):
            name, j = group.run_name(i), group.first + i
            runs.append(PlannedRun("train", name, group.name, "random", spec.seeds[j % len(spec.seeds)],
                                   out / "train" / name, genotype=str(out / "genotypes" / f"{name}.json")))  # fmt: skip
    for g in spec.published:
        for s in spec.seeds:
            runs.append(PlannedRun("train", f"{g}-s{s}", g, "published", s, out / "train" / f"{g}-s{s}", genotype=g))
    return runs


def describe(run: PlannedRun) -> str:
    if run.command == "search":
        assert run.method is not None
        opts = "".join(f", {k} {v}" for k, v in run.method.options.items())
        return f"search {run.name} (method {run.method.method}{opts}, seed {run.seed})"
    random = "a random cell" if run.group == RANDOM else f"a random cell of {run.group}"
    what = {"searched": f"the cell of search {run.search}", "random": random, "published": run.genotype}
    return f"train {run.name} ({what[run.kind]}, seed {run.seed})"


# --- running ---------------------------------------------------------------------------------------------


def open_study(spec: StudySpec, out: Path, create: bool = True) -> None:
    """Check DIR is this study's (or empty/new), and record the config; another study's DIR is refused."""
    from . import __version__

    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} is a file; give a directory for the study", options=("out",))
    saved_path = out / "study.json"
    if saved_path.exists():
        try:
            saved = json.loads(saved_path.read_text()).get("config")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise BnasError(f"{saved_path} is malformed; choose another out directory", options=("out",)) from None
        mine = json.loads(dumps(spec.to_json()))
        if saved != mine:
            diff = [k for k in mine if not isinstance(saved, dict) or saved.get(k) != mine[k]]
            raise ConfigError(
                f"{out} holds a study with a different config ({', '.join(diff) or 'the form'} differ); rerun it with "
                "its own config (study.json) or choose another out directory",
                options=("out",),
            )
        return
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"out {out} is not empty and holds no study (no study.json); choose another directory", options=("out",)
        )
    if create:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved_path, dumps({"command": "study", "bnas": __version__, "config": spec.to_json()}, 1))


def execute(spec: StudySpec, run: PlannedRun) -> None:
    """Run (or resume) one planned run; a finished one is left as it is."""
    state = run.state()
    if state == "done":
        return
    from .options import resume_config

    if run.command == "search":
        from .search import Searcher

        assert run.method is not None
        cfg = spec.search_config(run.method, run.seed, run.path)
        if state == "resume":  # the policy of every resume: the study's options must be the run's own
            cfg = resume_config(run.path, type(cfg), cfg.to_json())
        Searcher(cfg, resume=state == "resume", overwrite=state == "new").run_search()
        return
    from .train import Trainer

    if run.kind == "random":
        write_random_cell(spec, run)
    cfg = spec.train_config(run.genotype, run.seed, run.path)
    if state == "resume":  # under a budget the run's config.json holds the epochs the budget sized
        given = {k: v for k, v in cfg.to_json().items() if not (k == "epochs" and cfg.budget is not None)}
        cfg = resume_config(run.path, type(cfg), given)
    Trainer(cfg, resume=state == "resume", overwrite=state == "new").run_training()


def write_random_cell(spec: StudySpec, run: PlannedRun) -> None:
    """Random cell I of its group: `sample_genotype(space, 50000 + J)` (J: its index among all random cells), or
    under the group's budget drawn uniformly among those that fit, with its predicted cost (study_budget.py)."""
    from .study_budget import draw

    group = spec.group(run.group)
    index = int(run.name.rsplit("-", 1)[1])
    path = Path(run.genotype)
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = draw(spec, group, index, RANDOM_CELL_SEEDS + group.first + index)
    atomic_write_text(path, dumps(cell, 1) + "\n")


def run_study(spec: StudySpec, out: str | Path, *, dry_run: bool = False, print_fn=print, after_run=None,
              retries: int = 0):  # fmt: skip
    """Run every search and training of the study (resuming), then write the tables and the report. A run that
    fails is retried up to `retries` times, then recorded as failed (`results.failed`) while the others go on.
    `after_run(run)` is called after each run (tests stop a study there). Returns the StudyResults, or None
    for a dry run."""
    from .study_work import work

    out = Path(out)
    runs = plan(spec, out)
    open_study(spec, out, create=not dry_run)
    if dry_run:
        for i, run in enumerate(runs):
            print_fn(f"[{i + 1}/{len(runs)}] {describe(run)} -> {run.path} ({run.state()})")
        return None
    results, _ = work(spec, out, runs, retries=retries, print_fn=print_fn, after_run=after_run, execute=execute,
                      finish=lambda failed: finish(spec, out, runs, print_fn, failed), describe=describe,
                      always=True)  # fmt: skip
    return results


def load_study(out: str | Path) -> StudySpec:
    """The study a directory holds (its study.json), for workers and --report."""
    out = Path(out)
    saved = out / "study.json"
    if not saved.is_file():
        raise ConfigError(f"{out} holds no study (no study.json); start one with bnas study --config F --out {out}")
    try:
        config = json.loads(saved.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise BnasError(f"{saved} is malformed; start the study again in another directory") from None
    return StudySpec.from_json(config, str(saved))


def work_on(out: str | Path, *, retries: int = 0, print_fn=print) -> int:
    """One worker on a study directory (`bnas study --worker DIR`): claims runs until none is left; writes the
    results if it ends last. The exit code: 0 every run finished, 1 some failed for good (study_work)."""
    from .study_work import EXIT_FAILED, work

    out = Path(out)
    spec = load_study(out)
    runs = plan(spec, out)
    _, failed = work(spec, out, runs, retries=retries, print_fn=print_fn, execute=execute,
                     finish=lambda f: finish(spec, out, runs, print_fn, f), describe=describe)  # fmt: skip
    return EXIT_FAILED if failed else 0


def report_study(out: str | Path, print_fn=print) -> int:
    """`bnas study DIR --report`: the results of a study whose runs have all ended (finished or failed)."""
    from .study_work import EXIT_FAILED, failed_runs, status

    out = Path(out)
    spec = load_study(out)
    runs = plan(spec, out)
    by_path = {r.path: r for r in runs}
    left = [r for r in runs if status(r, by_path, None)[0] not in ("done", "failed")]
    if left:
        raise BnasError(
            f"{len(left)} of the study's {len(runs)} runs have not ended (the first: {left[0].command} "
            f"{left[0].name}); run bnas study --worker {out} until they have"
        )
    failed = failed_runs(runs)
    finish(spec, out, runs, print_fn, failed)
    return EXIT_FAILED if failed else 0


def finish(spec: StudySpec, out: Path, runs: list[PlannedRun], print_fn=print, failed: list | None = None):
    from .study_report import StudyResults, collect, write_outputs

    results: StudyResults = collect(spec, out, runs, failed)
    written = write_outputs(spec, out, results)
    print_fn("")
    print_fn(results.markdown())
    print_fn(f"wrote {', '.join(str(p) for p in written)}")
    return results
