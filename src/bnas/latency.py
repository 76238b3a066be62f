"""Latency on the user's device (issue 26 item 2): a table of measured forward times whose sum predicts a
genotype's forward latency, the way ProxylessNAS, FBNet and TF-NAS predict theirs.

The table holds, for the trained network of a `NetworkShape`, the forward time of every candidate operation at
every place the network has (its channels, stride and input resolution: costs.CellSite). An operation times
differently alone than inside a network (caches, the allocator; a pool or an identity costs less there), so the
table is calibrated on six whole networks of different operation mixes: a genotype's predicted latency is
fixed + scale x the sum of its operations' times with parameters + scale_free x that of its parameter-free ones,
over every cell of their type, with fixed (stem, preprocessing, node sums, concatenations, taps, head) and the
scales fitted by least squares, as costs.CostModel sums parameters and MACs. Times are medians of repeats after
a warm-up, in milliseconds; the table records the device, batch, threads, hardware and library versions it was
measured with. `benchmarks/latency_check.py` measures how well it predicts networks.

`with_latency(model, table)` makes the predicted latency a third resource of a costs.CostModel (whole
nanoseconds per (cell type, edge, operation), so that budgets, the constrained derivation and the penalty treat
it as they treat parameters and MACs); `cost_model(shape, latency_table)` builds the one a budget needs.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cells import search_edges
from .costs import Cost, CostModel, NetworkShape
from .errors import ConfigError
from .genotype import Genotype
from .jsonio import dumps, read_file
from .ops import PARAMETER_FREE, PRIMITIVES, make_op

FORMAT = "bnas-latency-table/1"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(fn: Callable[[], Any], device: torch.device, warmup: int = 5, repeats: int = 15,
                 min_s: float = 2e-3) -> float:  # fmt: skip
    """The median time of one call of `fn` in milliseconds: `warmup` untimed calls, then `repeats` timings, each
    of as many calls as fill `min_s` (short operations are timed in loops, not one call at a time)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        once = max(time.perf_counter() - t0, 1e-7)
        n = max(1, int(min_s / once))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            times.append((time.perf_counter() - t0) / n)
    return 1e3 * statistics.median(times)


def measure_network(net: torch.nn.Module, shape: NetworkShape, device: torch.device, batch: int = 1, **kw) -> float:
    """The forward latency of a whole network in milliseconds (eval mode, no gradients)."""
    net = net.to(device).eval()
    x = torch.randn(batch, shape.in_channels, shape.size, shape.size, device=device)
    return time_forward(lambda: net(x), device, **kw)


def _key(op: str, channels: int, stride: int, size: int) -> str:
    return f"{op}/c{channels}/s{stride}/r{size}"


@dataclass
class LatencyTable:
    """Measured times (ms) of each operation at each place of a network, and the fixed part."""

    shape: NetworkShape
    device: str
    batch: int
    fixed_ms: float
    ops: dict[str, float]  # _key(op, channels, stride, size) -> ms
    environment: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0  # operations time differently alone than inside a network: fitted on whole networks
    calibration: list[dict[str, float]] = field(default_factory=list)  # the networks the fit saw
    scale_free: float | None = None  # the parameter-free operations' own scale (None: `scale`)
    model: CostModel | None = field(default=None, repr=False, compare=False)
    path: str | None = field(default=None, repr=False, compare=False)  # the file it was read from

    def _model(self) -> CostModel:
        if self.model is None:
            self.model = CostModel.build(self.shape)
        return self.model

    def op_sums(self, genotype: Genotype) -> tuple[float, float]:
        """The sums of the genotype's operations' times (ms) over every cell of the network: the operations with
        parameters, and the parameter-free ones (pools, identities), which run differently inside a network."""
        model = self._model()
        model._check(genotype)
        sums = [0.0, 0.0]
        for site in model.sites:
            for op, src in genotype.cell(site.kind).edges:
                sums[op in PARAMETER_FREE] += self.ops[_key(op, site.channels, site.stride(src), site.input_size(src))]
        return sums[0], sums[1]

    def op_scale(self, op: str) -> float:
        return self.scale_free if self.scale_free is not None and op in PARAMETER_FREE else self.scale

    def predict(self, genotype: Genotype) -> float:
        """The predicted forward latency (ms) of the genotype's network: fixed + the scaled sums of its
        operations' times."""
        with_params, free = self.op_sums(genotype)
        free_scale = self.scale if self.scale_free is None else self.scale_free
        return self.fixed_ms + self.scale * with_params + free_scale * free

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "shape": self.shape.to_json(), "device": self.device, "batch": self.batch,
                "unit": "ms", "fixed_ms": self.fixed_ms, "scale": self.scale, "scale_free": self.scale_free,
                "ops": self.ops,
                "calibration": self.calibration, "environment": self.environment}  # fmt: skip

    def save(self, path: str | Path) -> None:
        Path(path).write_text(dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """A table written by `save` (`bnas latency-table`); one sentence naming the file when it is not one."""
        obj = read_file(path, "latency table", ConfigError)
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ConfigError(f"{path} is not a latency table (written by bnas latency-table)")
        try:
            table = cls(
                NetworkShape(**obj["shape"]), str(obj["device"]), int(obj["batch"]), float(obj["fixed_ms"]),
                {str(k): float(v) for k, v in obj["ops"].items()}, dict(obj.get("environment", {})),
                float(obj.get("scale", 1.0)), list(obj.get("calibration", [])), path=str(path),
            )  # fmt: skip
            if obj.get("scale_free") is not None:
                table.scale_free = float(obj["scale_free"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = f"lacks {e}" if isinstance(e, KeyError) else f"holds a malformed entry ({e})"
            raise ConfigError(f"latency table {path} {what}; measure it again with bnas latency-table") from None
        bad = next((k for k, v in table.ops.items() if not (v >= 0 and v < float("inf"))), None)
        scales_ok = table.scale > 0 and (table.scale_free is None or table.scale_free > 0)
        if bad is not None or not (abs(table.fixed_ms) < float("inf") and scales_ok):
            raise ConfigError(f"latency table {path} holds a time that is not a finite non-negative number "
                              f"({bad or 'fixed_ms or scale'}); measure it again with bnas latency-table")  # fmt: skip
        return table


def with_latency(model: CostModel, table: LatencyTable) -> CostModel:
    """`model` with the table's predicted latency as its third resource: per cell type, edge and operation
    scale x the operation's time summed over the cells of that type, and the fixed part, in whole nanoseconds
    (their sum is `table.predict` to within a few nanoseconds). A table of another network is one sentence."""
    name = table.path or "latency_table"
    if table.shape != model.shape:
        raise ConfigError(
            f"latency table {name} was measured for another network ({table.shape.describe()}) than the one the "
            f"budget is for ({model.shape.describe()}); measure one with bnas latency-table for that network",
            options=("latency_table",),
        )
    edges = search_edges(model.steps)
    tables = {}
    for kind in model.kinds:
        mine = [s for s in model.sites if s.kind == kind]
        rows = []
        for _, src in edges:
            row = []
            for op in PRIMITIVES:
                keys = [_key(op, s.channels, s.stride(src), s.input_size(src)) for s in mine] if op != "none" else []
                missing = next((k for k in keys if k not in table.ops), None)
                if missing is not None:
                    raise ConfigError(f"latency table {name} has no time for {missing}; measure it again with bnas "
                                      "latency-table", options=("latency_table",))  # fmt: skip
                row.append(round(1e6 * table.op_scale(op) * sum(table.ops[k] for k in keys)))
            rows.append(row)
        tables[kind] = {**model.tables[kind], "latency": rows}
    fixed = Cost(model.fixed.params, model.fixed.macs, round(1e6 * table.fixed_ms))
    source = {"file": table.path, "device": table.device, "batch": table.batch,
              "threads": table.environment.get("torch_threads")}  # fmt: skip
    return dataclasses.replace(model, fixed=fixed, tables=tables, latency_source=source)


def cost_model(shape: NetworkShape, latency_table: str | Path | LatencyTable | None = None) -> CostModel:
    """The cost model of `shape`'s network, with the latency table's predictions where one is given."""
    model = CostModel.build(shape)
    if latency_table is None:
        return model
    table = latency_table if isinstance(latency_table, LatencyTable) else LatencyTable.load(latency_table)
    return with_latency(model, table)


def measure(shape: NetworkShape, device: str | torch.device = "cpu", batch: int = 1, **kw) -> LatencyTable:
    """Measure the latency table of `shape`'s trained network on `device` (`kw`: time_forward's warm-up, repeats)."""
    from .runs import environment

    dev = torch.device(device)
    model = CostModel.build(shape)
    ops: dict[str, float] = {}
    for site in model.sites:
        for src in range(model.steps + 1):  # the places of this cell: inputs (stride may be 2) and nodes
            c, s, r = site.channels, site.stride(src), site.input_size(src)
            for op in PRIMITIVES[1:]:
                k = _key(op, c, s, r)
                if k not in ops:
                    module = make_op(op, c, s, affine=True).to(dev).eval()
                    x = torch.randn(batch, c, r, r, device=dev)
                    ops[k] = time_forward(lambda m=module, x=x: m(x), dev, **kw)
    table = LatencyTable(shape, str(dev), batch, 0.0, ops, {**environment(), "torch_threads": torch.get_num_threads()})
    table.model = model
    # calibration: whole networks of different operation mixes; the fixed part and the two scales (operations
    # with parameters, parameter-free ones) by least squares, or one scale where two are not determined
    sums, times = [], []
    for g in _calibration(shape.space, model.steps):
        sums.append(table.op_sums(g))
        times.append(measure_network(shape.build(g), shape, dev, batch, **kw))
    table.fixed_ms, table.scale, table.scale_free = fit_calibration(sums, times)
    table.calibration = [{"sum_ms": a + b, "sum_free_ms": b, "measured_ms": y}
                         for (a, b), y in zip(sums, times, strict=True)]  # fmt: skip
    return table


def fit_calibration(sums: list[tuple[float, float]], times: list[float]) -> tuple[float, float, float | None]:
    """fixed, scale, scale_free of `times` ~ fixed + scale x sum + scale_free x sum_free (least squares); when
    the two scales are not both positive (or not determined), one scale for both: (fixed, scale, None)."""
    x = torch.tensor([[1.0, a, b] for a, b in sums], dtype=torch.float64)
    y = torch.tensor(times, dtype=torch.float64)[:, None]
    if len(times) >= 3 and torch.linalg.matrix_rank(x) == 3:
        fixed, scale, scale_free = torch.linalg.lstsq(x, y).solution[:, 0].tolist()
        if scale > 0 and scale_free > 0:
            return fixed, scale, scale_free
    total = [a + b for a, b in sums]
    n = len(total)
    mx, my = sum(total) / n, sum(times) / n
    var = sum((t - mx) ** 2 for t in total)
    scale = sum((t - mx) * (m - my) for t, m in zip(total, times, strict=True)) / var if var > 0 else 1.0
    scale = scale if scale > 0 else 1.0
    return my - scale * mx, scale, None


def _calibration(space: str, steps: int) -> list[Genotype]:
    """Networks of different operation mixes (convolutions, pools, identities) that calibrate the table."""
    from .genotype import CellGenotype

    def cell(op: str) -> CellGenotype:
        return CellGenotype(tuple((op, src) for _ in range(steps) for src in (0, 1)))

    mixes = [
        ("sep_conv_3x3", "dil_conv_5x5"),
        ("max_pool_3x3", "skip_connect"),
        ("skip_connect", "avg_pool_3x3"),
        ("dil_conv_3x3", "sep_conv_5x5"),
        ("sep_conv_5x5", "max_pool_3x3"),
        ("avg_pool_3x3", "dil_conv_3x3"),
    ]
    # fmt: skip
    return [Genotype(cell(a), cell(b), space) for a, b in mixes]
