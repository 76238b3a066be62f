"""Exported files predict without bnas: each is loaded in a process where importing bnas fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from bnas.cli import main
from bnas.evaluation import load_trained
from bnas.export import FORMATS, export_checkpoint
from bnas.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(
    dataset="synthetic", synthetic_size=32, batch_size=8, eval_batch_size=16, init_channels=4, layers=2,
    enhance_cells=1, quiet=True, log_every=0, epochs=1,
)  # fmt: skip

# Per format: how a user without bnas loads the file, runs it on x (batch 3: not the traced batch) and reads
# bnas.json. Each script runs in a fresh interpreter in which `import bnas` raises.
LOADERS = {
    "export": """
        import torch
        extra = {"bnas.json": ""}
        program = torch.export.load(PATH, extra_files=extra)
        y = program.module()(torch.load(X))
        info = extra["bnas.json"]
    """,
    "torchscript": """
        import torch
        extra = {"bnas.json": ""}
        y = torch.jit.load(PATH, _extra_files=extra)(torch.load(X))
        info = extra["bnas.json"]
    """,
    "onnx": """
        import numpy, onnx, onnxruntime, torch
        info = {p.key: p.value for p in onnx.load(PATH).metadata_props}["bnas.json"]
        session = onnxruntime.InferenceSession(PATH, providers=["CPUExecutionProvider"])
        y = torch.from_numpy(session.run(None, {"images": torch.load(X).numpy()})[0])
    """,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    Trainer(TrainConfig.resolve(**{**TINY, "out": str(out)})).run_training()
    return out


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_exported_file_predicts_without_bnas(run_dir, tmp_path, fmt):
    model, _, meta = load_trained(run_dir)
    x = torch.randn(3, meta["in_channels"], meta["size"], meta["size"])
    with torch.no_grad():
        expected = model(x)
    out = tmp_path / f"model{FORMATS[fmt]}"
    assert main(["export", str(run_dir), "--format", fmt, "--out", str(out)]) == 0
    torch.save(x, tmp_path / "x.pt")
    body = textwrap.dedent(LOADERS[fmt]).replace("PATH", repr(str(out))).replace("X", repr(str(tmp_path / "x.pt")))
    script = (
        "import sys\nsys.modules['bnas'] = None\n"
        + body
        + (
            "\ninfo = info.decode() if isinstance(info, bytes) else info"
            f"\ntorch.save(y, {str(tmp_path / 'y.pt')!r})\nopen({str(tmp_path / 'info.json')!r}, 'w').write(info)\n"
            "assert 'bnas' not in sys.modules or sys.modules['bnas'] is None\n"
        )
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=1e-4, atol=1e-5)
    info = json.loads((tmp_path / "info.json").read_text())
    assert (info["num_classes"], info["in_channels"], info["size"], info["format"]) == (10, 3, meta["size"], fmt)


def test_export_is_the_default_format(run_dir):
    assert main(["export", str(run_dir)]) == 0
    assert (run_dir / "model.pt2").is_file()
    program = torch.export.load(run_dir / "model.pt2")
    x = torch.randn(5, 3, 32, 32)
    assert program.module()(x).shape == (5, 10)  # the batch is dynamic


def test_unknown_format_is_one_sentence(run_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", str(run_dir), "--format", "pickle"])
    assert e.value.code == 2
    from bnas.errors import ConfigError

    with pytest.raises(ConfigError, match="the export format must be one of"):
        export_checkpoint(run_dir, fmt="pickle")
