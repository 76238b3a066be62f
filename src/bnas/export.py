"""Files that predict without bnas: torch.export (default), TorchScript, ONNX.

Each file carries `bnas.json` (classes, input size and channels, normalisation, genotype) so that a user can
preprocess a new image and read the logits with torch or onnxruntime alone. torch 2.14 deprecates
TorchScript in favour of `torch.export`, whose ExportedProgram (`.pt2`) `torch.export.load` reads back.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from .data.userfolder import PREPROCESS
from .errors import ConfigError
from .evaluation import load_trained
from .jsonio import atomic_write_bytes, dumps

FORMATS: dict[str, str] = {"export": ".pt2", "torchscript": ".ts", "onnx": ".onnx"}
INPUT = "float (N, C, H, W): pixels / 255, then (x - mean) / std if given"


def default_path(checkpoint: str | Path, fmt: str) -> Path:
    """model.pt2 / model.ts / model.onnx next to the checkpoint (in the run directory)."""
    src = Path(checkpoint)
    return (src if src.is_dir() else src.parent) / f"model{FORMATS[_check(fmt)]}"


def _check(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"the export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def export_checkpoint(path: str | Path, out: str | Path | None = None, fmt: str = "export") -> Path:
    """Write the trained model of a run (directory, checkpoint.pt or best.pt) as a file that needs no bnas."""
    _check(fmt)
    model, cfg, meta = load_trained(path, "cpu")
    out = Path(out) if out is not None else default_path(path, fmt)
    info: dict[str, Any] = {k: meta[k] for k in ("num_classes", "in_channels", "size", "mean", "std", "genotype")}
    info.update(dataset=cfg.dataset, input=INPUT, format=fmt, mode="L" if meta["in_channels"] == 1 else "RGB")
    if meta.get("classes"):  # --dataset folder: the class names, and how a new image becomes the input
        info.update(classes=meta["classes"], preprocess=PREPROCESS)
    # batch 2: torch.export specialises a dimension traced at size 1, and the batch must stay dynamic
    x = torch.zeros(2, meta["in_channels"], meta["size"], meta["size"])
    {"export": _export, "torchscript": _torchscript, "onnx": _onnx}[fmt](model, x, out, dumps(info))
    return out


def _export(model: torch.nn.Module, x: torch.Tensor, out: Path, info: str) -> None:
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=False)
    atomic_write_bytes(out, lambda f: torch.export.save(program, f, extra_files={"bnas.json": info}))


def _torchscript(model: torch.nn.Module, x: torch.Tensor, out: Path, info: str) -> None:
    with warnings.catch_warnings():
        # torch marks jit as deprecated, and the tracer notes the shape tests it freezes (the input size is fixed)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, x, check_trace=False)
        atomic_write_bytes(out, lambda f: torch.jit.save(traced, f, _extra_files={"bnas.json": info}))


def _onnx(model: torch.nn.Module, x: torch.Tensor, out: Path, info: str) -> None:
    try:
        import onnx
    except ImportError:
        raise ConfigError(
            "ONNX export needs the onnx package (pip install onnx), or choose the format export (torch.export)"
        ) from None
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model, (x,), str(tmp), input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )  # fmt: skip
    proto = onnx.load(str(tmp))
    onnx.helper.set_model_props(proto, {"bnas.json": info})
    atomic_write_bytes(out, lambda f: f.write(proto.SerializeToString()))
    tmp.unlink()
