"""Bad input gets one clear sentence, faults lose nothing, runs are reproducible (issue 6)."""

import contextlib
import errno
import json
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnas import build_network, get_genotype
from bnas.cli import main
from bnas.errors import CheckpointError, ConfigError, GenotypeError
from bnas.genotype import CellGenotype, Genotype, derive
from bnas.jsonio import dumps, finite
from bnas.ops import PRIMITIVES
from bnas.runs import RunDir
from bnas.search import METHODS, SearchConfig
from bnas.train import TrainConfig

TINY = ["--dataset", "synthetic", "--synthetic-size", "32", "--batch-size", "8", "--init-channels", "4", "--quiet"]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bnas: error: ") and "Traceback" not in err, err
    return err


def test_cli_errors_have_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bnas.cli", "search", "--dataset", "svhn", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train_32x32.mat" in proc.stderr and str(tmp_path) in proc.stderr


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--lr", "-0.1"], "--lr must not be negative"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--partial-k", "3"], "--partial-k 3 must divide --init-channels 4"),
        (
            ["--batch-size", "64"],
            "--synthetic-size 32 gives search splits of 16 and 16 images, fewer than --batch-size 64",
        ),
        (["--order", "2", "--amp", "fp16"], "fp16"),
    ],
)
def test_invalid_hyperparameters(capsys, tmp_path, extra, needle):
    argv = ["search", *TINY, "--out", str(tmp_path / "r"), *extra]
    assert needle in _error(capsys, argv)


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert "cannot write to the output directory" in _error(capsys, ["search", *TINY, "--out", str(blocker / "run")])


def test_existing_run_is_not_overwritten_silently(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["search", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert "--resume" in _error(capsys, ["search", *TINY, "--epochs", "1", "--out", str(out)])


_OK = [["skip_connect", 0], ["skip_connect", 1]]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (
            json.dumps({"conv": {"edges": [["sep_conv_3x3", 0]]}, "enh": {"edges": [["skip_connect", 1]] * 2}}),
            "two edges per node",
        ),
        (
            json.dumps({"conv": {"edges": [["sep_conv_9x9", 0], ["skip_connect", 1]]}, "enh": {"edges": _OK}}),
            "unknown operation 'sep_conv_9x9'",
        ),
        (json.dumps({"conv": {"edges": [["skip_connect", 0], ["skip_connect", 5]]}, "enh": {"edges": _OK}}), "input 5"),
        ("{not json", "not valid JSON"),
        (json.dumps({"space": "bcnn", "conv": {"edges": [["skip_connect", 0], ["skip_connect", 1]]}}), "missing"),
    ],
)
def test_malformed_genotype_files(capsys, tmp_path, content, needle):
    path = tmp_path / "g.json"
    path.write_text(content)
    assert needle in _error(capsys, ["genotype", "show", str(path)])


def test_unknown_genotype_lists_close_names():
    with pytest.raises(GenotypeError, match="did you mean BNASv2_PC_cifar_v1"):
        get_genotype("BNASv2_PC_cifar_v11")


def test_corrupt_and_foreign_checkpoints(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        run.load_checkpoint("search")
    run.save_checkpoint({"kind": "train", "config": {}})
    with pytest.raises(CheckpointError, match="not a search checkpoint"):
        run.load_checkpoint("search")
    run.save_checkpoint({"kind": "search", "config": {"init_channels": 16}})
    with pytest.raises(CheckpointError, match="init_channels"):
        run.load_checkpoint("search", {"init_channels": 8})
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    state["format"] = 999
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="format 999"):
        run.load_checkpoint("search")


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.save_checkpoint({"kind": "search", "epoch": 3, "config": {}})

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        run.save_checkpoint({"kind": "search", "epoch": 4, "config": {}})
    monkeypatch.undo()
    assert run.load_checkpoint("search")["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def _alphas(out) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=False)["model"]


def test_same_seed_is_bit_identical_and_another_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / name
        assert main(["search", *TINY, "--epochs", "2", "--seed", str(seed), "--out", str(out)]) == 0
        runs[name] = _alphas(out)
    for key in ("arch.alpha_conv", "arch.alpha_enh"):
        assert torch.equal(runs["a"][key], runs["b"][key])
        assert not torch.equal(runs["a"][key], runs["c"][key])
    assert (tmp_path / "a" / "genotype.json").read_text() == (tmp_path / "b" / "genotype.json").read_text()
    env = json.loads((tmp_path / "a" / "config.json").read_text())
    assert env["seed"] == 1 and env["environment"]["torch"] == torch.__version__


# ---- property-based: genotype io and derivation

_ops = st.sampled_from(PRIMITIVES[1:])


@st.composite
def cells(draw):
    steps = draw(st.integers(1, 4))
    edges = tuple((draw(_ops), draw(st.integers(0, 1 + i // 2))) for i in range(2 * steps))
    return CellGenotype(edges, tuple(range(2, 2 + steps)))


@settings(max_examples=60, deadline=None)
@given(cells(), cells(), st.sampled_from(["bcnn", "darts"]))
def test_genotype_json_and_darts_text_roundtrip(a, b, space):
    g = Genotype(a, b, space)
    assert Genotype.from_json(json.loads(json.dumps(g.to_json()))) == g
    from bnas.genotype import from_darts_text

    assert from_darts_text(g.to_darts_text(), space) == g


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_random_text_is_a_clear_genotype_error(text):
    from bnas.genotype import from_darts_text

    for parse in (lambda: from_darts_text(text), lambda: Genotype.from_json(_try_json(text))):
        with contextlib.suppress(GenotypeError):
            parse()


def _try_json(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1), st.booleans())
def test_any_alphas_derive_a_valid_genotype_that_builds(seed, with_betas):
    g_ = torch.Generator().manual_seed(seed)
    alphas = [torch.randn(14, len(PRIMITIVES), generator=g_) * 3 for _ in range(2)]
    betas = [torch.randn(14, generator=g_) for _ in range(2)] if with_betas else None
    g = derive(alphas, betas)
    assert all(op != "none" for cell in (g.conv, g.enh) for op, _ in cell.edges)
    for cell in (g.conv, g.enh):
        for node in range(4):
            srcs = [src for _, src in cell.edges[2 * node : 2 * node + 2]]
            assert len(set(srcs)) == 2 and all(0 <= s < node + 2 for s in srcs)
    net = build_network(g, channels=4, layers=2, enhance=1)
    assert net(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def _nan_after(calls: int):
    """A forward hook that turns the supernet's output to NaN from the given call on (an injected fault)."""
    count = {"n": 0}

    def hook(module, args, output):
        count["n"] += 1
        return output * float("nan") if count["n"] >= calls else output

    return hook


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from bnas.search import SearchConfig, Searcher

    cfg = SearchConfig.resolve(
        "clr", dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, epochs=3, eval_every=0,
        out=str(tmp_path / "r"), quiet=True,
    )  # fmt: skip
    searcher = Searcher(cfg)
    # 2 steps per epoch, 2 forwards per step (architecture + weights): NaN from the 2nd epoch's 2nd step
    searcher.model.net.register_forward_hook(_nan_after(7))
    from bnas.errors import NumericalError

    with pytest.raises(NumericalError, match="epoch 2, step 2.*checkpoint of epoch 1 is kept"):
        searcher.run_search()
    state = RunDir(tmp_path / "r").load_checkpoint("search")
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )


def test_nan_skip_counts_the_skipped_steps(tmp_path):
    from bnas.search import SearchConfig, Searcher

    cfg = SearchConfig.resolve(
        "clr", dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, epochs=2, eval_every=0,
        out=str(tmp_path / "r"), quiet=True, on_nan="skip",
    )  # fmt: skip
    searcher = Searcher(cfg)
    searcher.model.net.register_forward_hook(_nan_after(7))
    searcher.run_search()
    skipped = [r["skipped_steps"] for r in searcher.history]
    assert skipped == [0, 2]  # the 2nd epoch's 2nd step: its architecture step and its weight step
    assert all(torch.isfinite(p).all() for p in searcher.model.parameters())


@pytest.mark.parametrize("command", ["search", "train"])
def test_unknown_dataset_is_one_sentence(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--dataset", "imagenet1k"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "invalid choice: 'imagenet1k'" in err and "'cifar10'" in err and f"bnas {command} --help" in err


def _nan_at(call: int):
    """A forward hook that turns exactly one forward's output (the given call) to NaN: a transient fault."""
    count = {"n": 0}

    def hook(module, args, output):
        count["n"] += 1
        return output * float("nan") if count["n"] == call else output

    return hook


def _tiny_train(tmp_path, **kw):
    from bnas.train import TrainConfig, Trainer

    cfg = TrainConfig.resolve(
        dataset="synthetic", synthetic_size=32, batch_size=8, eval_batch_size=16, init_channels=4, layers=2,
        enhance_cells=1, quiet=True, log_every=0, out=str(tmp_path / "t"), **kw,
    )  # fmt: skip
    return Trainer(cfg)


def test_training_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from bnas.errors import NumericalError

    trainer = _tiny_train(tmp_path, epochs=3)
    trainer.model.register_forward_hook(_nan_after(6))  # 4 steps per epoch: the 2nd epoch's 2nd step
    with pytest.raises(
        NumericalError, match="training loss .*epoch 2, step 2.*checkpoint of epoch 1 is kept.*resume=True"
    ):
        trainer.run_training()
    state = RunDir(tmp_path / "t").load_checkpoint("train")
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )


def test_training_nan_skip_counts_the_step_and_keeps_weights_finite(tmp_path):
    trainer = _tiny_train(tmp_path, epochs=2, on_nan="skip")
    trainer.model.register_forward_hook(_nan_at(6))
    trainer.run_training()
    assert [r["skipped_steps"] for r in trainer.history] == [0, 1]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    momenta = [s["momentum_buffer"] for s in trainer.optimizer.state.values() if "momentum_buffer" in s]
    assert momenta and all(torch.isfinite(m).all() for m in momenta)


def test_training_on_nan_can_change_on_resume_and_deterministic_is_recorded(tmp_path, capsys):
    argv = ["train", *TINY, "--layers", "2", "--enhance-cells", "1", "--epochs", "1", "--out", str(tmp_path / "t")]
    assert main([*argv, "--deterministic"]) == 0
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["deterministic"] is True and config["on_nan"] == "stop"
    resume = ["train", "--resume", str(tmp_path / "t"), "--extend-epochs", "1", "--on-nan", "skip", "--quiet"]
    assert main(resume) == 0
    assert json.loads((tmp_path / "t" / "config.json").read_text())["on_nan"] == "skip"


# ---- issue 13: every option is validated once, in the configuration's validate(); run files are strict JSON


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--init-channels", "0"], "--init-channels must be at least 1, got 0"),
        (["--init-channels", "5"], "even --init-channels"),
        (["--device", "tpu"], "--device 'tpu' is not a device"),
        (["--device", "cuda:99"], "--device cuda:99"),
        (["--device", "meta"], "--device meta is not supported"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--arch-lr", "inf"], "--arch-lr must be a finite number, got inf"),
        (["--weight-decay=-inf"], "--weight-decay must be a finite number"),
        (["--momentum", "1"], "--momentum must be in [0, 1)"),
        (["--arch-betas", "0.5", "1"], "--arch-betas B2 must be in [0, 1)"),
        (["--train-portion", "1"], "--train-portion must be in (0, 1)"),
        (["--grad-clip", "0"], "--grad-clip must be greater than 0"),
        (["--fd-eps", "nan"], "--fd-eps must be a finite number"),
        (["--clr-power=-1"], "--clr-power must not be negative"),
        (["--layers", "0"], "--layers must be at least 1"),
        (["--blocks", "1"], "--blocks must be at least 2"),
        (["--hessian-every=-1"], "--hessian-every must be at least 0"),
        (["--seed=-1"], "--seed must be at least 0"),
        (["--image-size", "8"], "--image-size must be at least 32"),
        (["--subset", "0"], "--subset must be at least 1"),
        (["--synthetic-size", "8"], "--synthetic-size 8 gives search splits of 4 and 4 images"),
        (["--dataset", "imagenet"], "--dataset imagenet-subset"),
        (["--data-dir", "README.md"], "--data-dir README.md is a file, not a directory"),
        (["--out", "README.md"], "--out README.md is a file, not a directory"),
        (["--config", "."], "--config . is a directory"),
        (["--config", "missing.json"], "--config missing.json does not exist"),
    ],
)
def test_every_search_option_is_one_sentence(capsys, tmp_path, monkeypatch, extra, needle):
    (tmp_path / "README.md").write_text("a file")
    monkeypatch.chdir(tmp_path)
    argv = ["search", *TINY, "--epochs", "1", "--out", str(tmp_path / "r"), *extra]
    assert needle in _error(capsys, argv)
    assert not (tmp_path / "r" / "config.json").exists()  # nothing was started


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
        (["--drop-path", "1"], "--drop-path must be in [0, 1)"),
        (["--label-smoothing", "inf"], "--label-smoothing must be a finite number"),
        (["--auxiliary-weight=-1"], "--auxiliary-weight must not be negative"),
        (["--cutout=-1"], "--cutout must be at least 0"),
        (["--threads=-1"], "--threads must be at least 0"),
        (["--eval-batch-size", "0"], "--eval-batch-size must be at least 1"),
        (["--init-channels", "3"], "even --init-channels"),
        (["--device", "tpu"], "--device 'tpu' is not a device"),
        (["--val-split", "1"], "--val-split must be in [0, 1)"),
        (["--synthetic-size", "4"], "--synthetic-size 4 leaves 4 training images, fewer than --batch-size 8"),
        (["--genotype", "."], "--genotype . is a directory without genotype.json"),
        (["--genotype", "x" * 300], "cannot be read"),
        (["--resume", "README.md"], "--resume README.md is a file, not a run directory"),
        (["--resume", "missing"], "--resume missing does not exist"),
    ],
)
def test_every_train_option_is_one_sentence(capsys, tmp_path, monkeypatch, extra, needle):
    (tmp_path / "README.md").write_text("a file")
    monkeypatch.chdir(tmp_path)
    argv = ["train", *TINY, "--layers", "2", "--enhance-cells", "1", "--epochs", "1", "--out", str(tmp_path / "t")]
    assert needle in _error(capsys, [*argv, *extra])
    assert not (tmp_path / "t" / "config.json").exists()


def test_resume_names_the_command_of_the_run(capsys, tmp_path):
    for kind, other in (("train", "search"), ("search", "train")):
        run = tmp_path / kind
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"command": kind}))
        assert f"continue it with bnas {kind} --resume {run}" in _error(capsys, [other, "--resume", str(run)])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["eval", "RUN", "--device", "tpu"], "--device 'tpu' is not a device"),
        (["eval", "RUN", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["bench", "search", "--device", "tpu"], "--device 'tpu' is not a device"),
        (["bench", "search", "--threads=-1"], "--threads must be at least 0"),
        (["report", "RUN", "-o", "README.md"], "--output README.md is a file"),
        (["genotype", "plot", "BNASv2_CLR_v1", "-o", "README.md/cell.svg"], "README.md is a file, not a directory"),
        (["sample-imagenet", "--src", ".", "--dst", "README.md"], "--dst README.md is a file"),
        (["compare", "README.md"], "not a directory"),
    ],
)
def test_other_commands_check_their_options(capsys, tmp_path, monkeypatch, argv, needle):
    (tmp_path / "README.md").write_text("a file")
    (tmp_path / "RUN").mkdir()
    monkeypatch.chdir(tmp_path)
    assert needle in _error(capsys, argv)


_FIELD_VALUES = st.one_of(
    st.integers(-3, 600),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["auto", "cpu", "cuda", "cuda:7", "mps", "tpu", "synthetic", "bcnn", "darts", "fd", "skip"]),
    st.lists(st.floats(-1, 2), max_size=3),
)


def _fields(cls, skip=()):
    import dataclasses

    # compile: any name but off imports torch._dynamo (150 MB) to check it; tested on the command line above
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("compile", *skip)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_search_options_are_a_config_error_or_a_valid_config(data):
    method = data.draw(st.sampled_from([*METHODS, "nope"]))
    overrides = data.draw(
        st.dictionaries(st.sampled_from(_fields(SearchConfig, ("method",))), _FIELD_VALUES, max_size=6)
    )
    try:
        cfg = SearchConfig.resolve(method, **overrides)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    cfg.validate()  # a resolved configuration stays valid, and it is what config.json records
    assert json.loads(dumps(cfg.to_json()))["batch_size"] == cfg.batch_size


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_fields(TrainConfig)), _FIELD_VALUES, max_size=6))
def test_any_train_options_are_a_config_error_or_a_valid_config(overrides):
    try:
        cfg = TrainConfig.resolve(**overrides)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    except GenotypeError:  # an unknown genotype name: the genotype's own one sentence
        assert "genotype" in overrides
        return
    cfg.validate()


def test_strict_json_writes_non_finite_floats_as_null(tmp_path):
    import numpy as np

    obj = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": (2, np.float32(3.5)),
           "e": torch.tensor(float("nan")), "f": tmp_path, "g": np.float64("nan")}  # fmt: skip
    assert finite(obj) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, 3.5], "e": None, "f": str(tmp_path),
                           "g": None}  # fmt: skip

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    assert json.loads(dumps(obj, indent=1), parse_constant=strict)["a"] is None
    run = RunDir(tmp_path)
    run.write_json("summary.json", {"final": {"train_loss": float("nan")}})
    run.append("metrics.jsonl", {"kind": "epoch", "epoch": 0, "train_loss": float("inf")})
    assert json.loads((tmp_path / "summary.json").read_text(), parse_constant=strict) == {"final": {"train_loss": None}}
    assert json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=strict)["train_loss"] is None


def test_a_nan_loss_leaves_strict_json_run_files(tmp_path):
    from bnas.search import Searcher

    cfg = SearchConfig.resolve(
        "clr", dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, epochs=1, eval_every=1,
        out=str(tmp_path / "r"), quiet=True, on_nan="skip",
    )  # fmt: skip
    searcher = Searcher(cfg)
    searcher.model.net.register_forward_hook(_nan_after(1))  # every forward: no finite step, NaN evaluation
    searcher.run_search()

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    for path in (tmp_path / "r").rglob("*.json*"):
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            json.loads(line, parse_constant=strict)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["final"]["valid_loss"] is None


def test_synthetic_data_grows_to_the_batch_unless_its_size_is_given():
    from bnas.search import Searcher

    cfg = SearchConfig.resolve("pc", dataset="synthetic", init_channels=4)  # PC's batch 512: two splits of 512
    assert cfg.batch_size == 512 and cfg.synthetic_size == 1024
    Searcher(cfg).check_data()
    assert SearchConfig.resolve("clr", dataset="synthetic", train_portion=0.25).synthetic_size == 1024
    assert SearchConfig.resolve("clr", dataset="synthetic", batch_size=8).synthetic_size == 512  # never smaller
    with pytest.raises(ConfigError, match="--synthetic-size 600 gives search splits of 300 and 300 images.*1024"):
        SearchConfig.resolve("pc", dataset="synthetic", synthetic_size=600)
    assert TrainConfig.resolve(dataset="synthetic", batch_size=1000).synthetic_size == 1000
    assert TrainConfig.resolve(dataset="synthetic", batch_size=900, val_split=0.1).synthetic_size == 1000
    with pytest.raises(ConfigError, match="--synthetic-size 512 leaves 512 training images.*--batch-size 1000"):
        TrainConfig.resolve(dataset="synthetic", batch_size=1000, synthetic_size=512)
