"""Watching and showing runs (issue 5): progress modes, TensorBoard scalars, the alpha-Hessian diagnostic,
cell drawings, `bnas report` and `bnas compare`."""

import io
import json
import math
import re
import shutil
import xml.etree.ElementTree as ET

import matplotlib.image
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from bnas import SpaceConfig, SuperNet, get_genotype, plots, report
from bnas.cli import main
from bnas.diagnostics import alpha_hessian_eigenvalue, dominant_eigenvalue
from bnas.errors import BnasError
from bnas.progress import Reporter
from bnas.runs import RunDir, flatten_scalars
from bnas.search import SearchConfig, Searcher

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the collapse diagnostic: dominant eigenvalue of the alpha Hessian --------------------------------------


def _quadratic_hvp(eigenvalues):
    """f(x) = x^T A x / 2 with A = Q diag(eigenvalues) Q^T; Hessian-vector products by double backprop."""
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(0.5 * x @ a @ x, x, create_graph=True)

    def hvp(v):
        return torch.autograd.grad(g, x, grad_outputs=v[0], retain_graph=True)

    return hvp, x, a


@pytest.mark.parametrize(
    "eigenvalues",
    [[4.0, 2.0, 1.0, 0.5, 0.1], [3.0, -5.0, 1.0, 0.5, -0.2], [-1.0, -2.0, -0.5]],
    ids=["positive-definite", "negative-dominates", "negative-definite"],
)
def test_dominant_eigenvalue_matches_the_exact_spectrum(eigenvalues):
    hvp, x, a = _quadratic_hvp(eigenvalues)
    got = dominant_eigenvalue(hvp, [x], iters=500, tol=1e-13, generator=torch.Generator().manual_seed(0))
    # the largest eigenvalue (RobustDARTS' lambda_max), also when one of larger magnitude is negative
    assert got == pytest.approx(torch.linalg.eigvalsh(a).max().item(), rel=1e-8)


def test_alpha_hessian_eigenvalue_of_a_tiny_supernet_matches_the_exact_hessian():
    torch.manual_seed(0)
    model = SuperNet(SpaceConfig(channels=4, num_classes=3, steps=1)).double()  # 2 x 2 edges x 8 ops = 32 alphas
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_(0, 1.0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g)
    names = [f"arch.alpha_{k}" for k in model.cell_types]
    shapes = [model.get_parameter(n).shape for n in names]

    def loss(flat):
        parts = flat.split([s.numel() for s in shapes])
        params = {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    flat = torch.cat([model.get_parameter(n).detach().flatten() for n in names])
    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat)).max().item()
    model.eval()
    buffers = [b.clone() for b in model.buffers()]
    got = alpha_hessian_eigenvalue(model, x, y, iters=200, tol=1e-12, generator=torch.Generator().manual_seed(0))
    assert got == pytest.approx(exact, rel=1e-8)
    assert not model.training  # its mode ...
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))  # ... and BN statistics


# --- progress and TensorBoard -------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_plain_lines_in_logs_nothing_when_quiet():
    out, err = _Tty(), _Tty()
    term = Reporter(out=out, err=err)
    assert term.bar
    with term.epoch(0, 2, 3) as bar:
        for _ in range(3):
            bar.update(loss=1.5, acc=0.25, rate=1234.0)
        assert bar._tqdm.n == 3 and bar._tqdm.postfix == "loss=1.5, acc=0.25, img/s=1234"
    assert "epoch 1/2" in err.getvalue()

    out, err = io.StringIO(), io.StringIO()  # stdout redirected: no bar, a line every `line_every` seconds
    logs = Reporter(out=out, err=err, line_every=0.0)
    assert not logs.bar
    with logs.epoch(0, 2, 3) as bar:
        for _ in range(3):
            bar.update(loss=1.5, acc=0.25, rate=1234.0)
    lines = err.getvalue().splitlines()
    assert lines == [
        "  epoch 1/2 step 1/3: loss 1.5 acc 0.25 img/s 1234",
        "  epoch 1/2 step 2/3: loss 1.5 acc 0.25 img/s 1234",
    ]
    record = {"epoch": 0, "train_loss": 1.5, "train_acc": 0.25, "images_per_s": 99.0, "hessian_eig": 0.5}
    logs.epoch_done(record, None)
    assert "99 img/s" in out.getvalue() and "hessian eig 0.5" in out.getvalue()

    out, err = _Tty(), _Tty()
    quiet = Reporter(quiet=True, out=out, err=err, line_every=0.0)
    with quiet.epoch(0, 2, 3) as bar:
        for _ in range(3):
            bar.update(loss=1.0, acc=0.5, rate=10.0)
    quiet.epoch_done(record, None)
    assert out.getvalue() == err.getvalue() == ""


class _Writer:
    def __init__(self, logdir, purge_step):
        self.logdir, self.purge_step, self.scalars, self.closed = logdir, purge_step, [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_epoch_records_become_tensorboard_scalars(tmp_path, monkeypatch):
    writers = []
    monkeypatch.setattr("bnas.runs.tensorboard_writer", lambda d, p: writers.append(_Writer(d, p)) or writers[-1])
    run = RunDir.create(tmp_path / "run")
    run.log({"kind": "step", "epoch": 0, "step": 5, "train_loss": 2.0})  # steps stay in metrics.jsonl only
    run.log({"kind": "epoch", "epoch": 0, "train_loss": 1.5, "arch_loss": None, "parameter_free": {"conv": 3}})
    run.close()
    assert writers[0].scalars == [("train_loss", 1.5, 0), ("parameter_free/conv", 3.0, 0)]
    assert writers[0].purge_step is None and writers[0].closed
    resumed = RunDir(tmp_path / "run")
    resumed.truncate_metrics(after_epoch=0)  # a resume rewrites epochs >= 1: TensorBoard purges them
    resumed.log({"kind": "epoch", "epoch": 1, "valid_acc": 0.5})
    assert writers[1].purge_step == 1 and writers[1].scalars == [("valid_acc", 0.5, 1)]
    assert flatten_scalars({"a": {"b": {"c": 1}}, "ok": True, "g": [1, 2]}) == {"a/b/c": 1.0}


def test_real_tensorboard_event_file(tmp_path):
    """The scalars read back with TensorBoard's own reader (tensorboard is a dev dependency: no skip)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir.create(tmp_path / "run")
    run.log({"kind": "epoch", "epoch": 0, "train_loss": 1.5, "lr": {"w": 0.1}})
    run.log({"kind": "epoch", "epoch": 1, "train_loss": 1.25, "lr": {"w": 0.05}})
    run.close()
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("train_loss")]
    assert loss == [(0, 1.5), (1, 1.25)]
    assert [round(e.value, 6) for e in acc.Scalars("lr/w")] == [0.1, 0.05]


# --- cells as pictures ----------------------------------------------------------------------------------------


def _nonblank_png(path) -> None:
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 100
    assert img[..., :3].std() > 0.05  # drawn on, not a blank canvas


ENGINES = ["matplotlib"] + (["dot"] if shutil.which("dot") else [])


@pytest.mark.parametrize("engine", ENGINES)
def test_genotype_plot_writes_png_and_svg(engine, tmp_path, capsys):
    for suffix in ("png", "svg"):
        out = tmp_path / f"cell.{suffix}"
        assert main(["genotype", "plot", "BNASv2_CLR_v1", "-o", str(out), "--engine", engine]) == 0
        assert f"wrote {out}" in capsys.readouterr().out
    _nonblank_png(tmp_path / "cell.png")
    svg = ET.parse(tmp_path / "cell.svg").getroot()
    assert svg.tag.endswith("svg") and len(list(svg.iter())) > 50


def test_dot_source_has_every_edge_of_both_cells():
    g = get_genotype("BNASv2_PC_cifar_v2")
    dot = plots.genotype_dot(g)
    edges = re.findall(r"(\w+)_(\d) -> \1_(\d) \[label=\"([^\"]+)\"", dot)
    expected = {
        (c, str(src), str(i // 2 + 2), plots.SHORT[op]) for c in g.names for i, (op, src) in enumerate(g.cell(c).edges)
    }
    assert set(edges) == expected and len(edges) == 16


def test_edges_leaving_one_state_start_apart_and_nest():
    """BNASv2_CLR_v1's convolution cell has four edges leaving c_{k-1}: each starts at its own point on the box,
    the longer an arc the further out, and every end lies on its own box."""
    cell = get_genotype("BNASv2_CLR_v1").cell("conv")
    ports = plots._edge_ports(cell, half=0.34)
    for above in (True, False):
        leaving = sorted((i // 2 + 2, ports[(i, "out")]) for i, (_, src) in enumerate(cell.edges)
                         if src == 1 and (i % 2 == 0) == above)  # fmt: skip
        starts = [x for _, x in leaving]
        assert len(set(starts)) == len(starts) and starts == sorted(starts, reverse=True)  # longest leftmost
    assert sum(src == 1 and i % 2 == 0 for i, (_, src) in enumerate(cell.edges)) == 4
    for i, (_, src) in enumerate(cell.edges):
        assert abs(ports[(i, "out")] - src) < (0.34 * 1.3 if src < 2 else 0.34)
        assert i // 2 + 2 - 0.34 < ports[(i, "in")] <= i // 2 + 2  # the left half of the node's box


def test_genotype_plot_without_output_says_where_it_wrote(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["genotype", "plot", "BNASv2_CLR_v1", "--engine", "matplotlib"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'BNASv2_CLR_v1.svg'}" in out and "-o" in out
    assert (tmp_path / "BNASv2_CLR_v1.svg").stat().st_size > 1000


def test_genotype_list_is_a_table_with_parameters(capsys):
    from bnas.genotype import list_genotypes

    assert main(["genotype", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "space", "parameters", "param-free"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.split()[0] in list_genotypes()}
    assert set(rows) == set(list_genotypes()) and "{" not in "".join(lines)
    assert rows["BNASv2_CLR_v1"][1:4] == ["bcnn", "3,338,074", "1/7"]  # SPEC: the published code's count
    assert rows["BNASv2_PC_cifar_v1"][2] == "3,678,682"
    assert "2.76%" in " ".join(rows["DARTS_V2"])


def test_genotype_plot_errors_are_one_sentence(tmp_path, capsys, monkeypatch):
    assert main(["genotype", "plot", "BNASv2_CLR_v1", "-o", str(tmp_path / "cell.gif")]) == 2
    assert ".svg, .png or .pdf" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "which", lambda _: None)
    assert main(["genotype", "plot", "BNASv2_CLR_v1", "-o", str(tmp_path / "c.svg"), "--engine", "dot"]) == 2
    assert "dot program was not found" in capsys.readouterr().err


# --- report and compare on a real (tiny) search ---------------------------------------------------------------


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = SearchConfig.resolve(
        "clr", dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, epochs=3, log_every=1,
        hessian_every=1, hessian_iters=3, out=str(out), quiet=True,
    )  # fmt: skip
    Searcher(cfg).run_search(Reporter(quiet=True, out=io.StringIO()))
    return out


def test_search_logs_alphas_and_collapse_diagnostics(search_run):
    epochs = RunDir(search_run).metrics("epoch")
    assert all(math.isfinite(r["hessian_eig"]) for r in epochs)
    assert all(set(r["parameter_free"]) == {"conv", "enh"} for r in epochs)
    alphas = RunDir(search_run).records("alphas.jsonl")
    assert [r["epoch"] for r in alphas] == [0, 1, 2, 3]  # 0: the starting point
    for r in alphas:
        for rows in r["alphas"].values():
            assert len(rows) == 14 and all(sum(row) == pytest.approx(1.0, abs=1e-4) for row in rows)
    assert alphas[0]["alphas"] != alphas[-1]["alphas"]


def test_report_html_references_existing_pngs_with_data(search_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(search_run), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == sorted(
        ["curves.png", "collapse.png", "decision.png", "alphas_conv.png", "alphas_enh.png", "cells.png"]
    )
    for src in srcs:
        _nonblank_png(out / src)
    assert "http" not in page.replace("http-equiv", "")  # self-contained: no external style sheets or scripts

    # each plot carries the run's data
    run = plots.load_run(search_run)
    epochs = run.epochs
    curves = plots.curves_figure(run)
    loss_ax = curves.axes[0]
    train = next(line for line in loss_ax.lines if line.get_label() == "train (weights)")
    assert list(train.get_ydata()) == pytest.approx([r["train_loss"] for r in epochs])
    assert list(train.get_xdata()) == [1, 2, 3]
    assert all(ax.lines for ax in curves.axes)
    collapse = plots.collapse_figure(run)
    hess = next(line for ax in collapse.axes for line in ax.lines if line.get_label() == "dominant eigenvalue")
    assert list(hess.get_ydata()) == pytest.approx([r["hessian_eig"] for r in epochs])
    free = [line for line in collapse.axes[0].lines]
    assert [list(line.get_ydata()) for line in free] == [
        [r["parameter_free"][c] for r in epochs] for c in ("conv", "enh")
    ]
    for cell in ("conv", "enh"):
        fig = plots.alphas_figure(run, cell)
        panels = [ax for ax in fig.axes if ax.lines]
        assert len(panels) == 14 and all(len(ax.lines) == 8 for ax in panels)
        assert all(len(line.get_xdata()) == 4 for ax in panels for line in ax.lines)  # initial + 3 epochs


def test_compare_prints_runs_side_by_side(search_run, tmp_path, capsys):
    running = tmp_path / "running"
    shutil.copytree(search_run, running)
    (running / "summary.json").unlink()
    assert main(["compare", str(search_run), str(running)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], lines[2:]
    assert "param-free ops" in header and "hessian eig" in header and "valid acc %" in header
    free = "/".join(str(v) for v in get_genotype(str(search_run)).parameter_free().values())
    assert rows[0].split()[:4] == ["tiny", "clr", "synthetic", "3/3"] and free in rows[0]
    assert "3/3 (running or stopped)" in rows[1]
    last = RunDir(search_run).metrics("epoch")[-1]
    assert f"{100 * last['valid_acc']:.2f}" in rows[0]


def test_report_errors_are_one_sentence(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    RunDir.create(tmp_path / "empty").write_json("config.json", {"command": "search"})
    with pytest.raises(BnasError, match="no finished epoch"):
        report.write_report(tmp_path / "empty")
    assert json.loads((tmp_path / "empty" / "config.json").read_text())["command"] == "search"
