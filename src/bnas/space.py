"""Search spaces and trained networks: a wiring from `topology` given search cells or genotype cells.

The architecture parameters live inside the supernet as `nn.Parameter`s under `arch.` so that
checkpoints carry them and DDP all-reduces their gradients; `arch_parameters()` and
`weight_parameters()` keep the two sets apart for the two optimisers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .cells import Cell, CellBackend, MixedEdge, PartialEdge, search_edges
from .genotype import Genotype, derive
from .ops import PRIMITIVES, make_op
from .topology import BroadNet, BroadShape, DeepNet, DeepShape


@dataclass(frozen=True)
class SpaceConfig:
    """What a supernet is: wiring, size, and the edge relaxation (full or partial channels, edge norm)."""

    space: str = "bcnn"  # bcnn | darts
    channels: int = 16
    blocks: int = 2  # L (bcnn)
    enhance: int = 1  # E (bcnn)
    layers: int = 8  # cells (darts)
    num_classes: int = 10
    in_channels: int = 3
    stem: str = "cifar"
    partial_k: int = 1  # K; 1 = full edges
    edge_norm: bool = False
    steps: int = 4


def _check_space(space: str) -> None:
    if space not in ("bcnn", "darts"):
        raise ValueError(f"unknown search space {space!r} (bcnn or darts)")


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


# op weights per cell type ("conv"/"enh" or "normal"/"reduce"), each of the alphas' shape: one fixed architecture
PathWeights = dict[str, torch.Tensor]


class NetworkBackend(CellBackend, Protocol):
    """A cell backend that also prepares the wiring's modules and runs the supernet's training forward."""

    def adopt(self, net: nn.Module) -> None: ...

    def context(self) -> contextlib.AbstractContextManager: ...


class SuperNet(nn.Module):
    """A supernet: the wiring with mixed edges, plus its alphas (and betas) per cell type.

    `backend` (bnas.fast.BACKEND, or None for the plain modules) computes the same training forward faster;
    the parameters, the state dict and every evaluation forward are the plain modules'."""

    def __init__(self, cfg: SpaceConfig, backend: NetworkBackend | None = None):
        super().__init__()
        _check_space(cfg.space)
        self.cfg = cfg
        edges = search_edges(cfg.steps)

        def make_edge(_: int, c: int, stride: int) -> nn.Module:
            return PartialEdge(c, stride, cfg.partial_k) if cfg.partial_k > 1 else MixedEdge(c, stride)

        def make_cell(kind: str, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool) -> Cell:
            return Cell(edges, make_edge, c_pp, c_p, c, reduction, reduction_prev, affine=False, backend=backend)

        if cfg.space == "bcnn":
            # stem multiplier 3 with either stem: the published ImageNet search supernet widens its stem too
            shape = BroadShape(cfg.channels, cfg.num_classes, cfg.in_channels, cfg.blocks, 0, cfg.enhance, cfg.stem)
            self.net: BroadNet | DeepNet = BroadNet(shape, make_cell, affine=False)
        else:
            mult = 3 if cfg.stem == "cifar" else 1  # PC-DARTS' ImageNet search stem: C/2 -> C -> C
            shape = DeepShape(cfg.channels, cfg.num_classes, cfg.in_channels, cfg.layers, cfg.stem, mult)
            self.net = DeepNet(shape, make_cell, affine=False)
        n_edges = len(edges)
        self.arch = nn.ParameterDict()
        for kind in self.net.cell_types:
            self.arch[f"alpha_{kind}"] = nn.Parameter(1e-3 * torch.randn(n_edges, len(PRIMITIVES)))
            if cfg.edge_norm:
                self.arch[f"beta_{kind}"] = nn.Parameter(1e-3 * torch.randn(n_edges))
        self._node_slices = [(sum(range(2, n + 2)), n + 2) for n in range(cfg.steps)]
        self.backend = backend
        if backend is not None:
            backend.adopt(self.net)

    @property
    def cell_types(self) -> tuple[str, str]:
        return self.net.cell_types

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.arch.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def edge_weights(self, betas: torch.Tensor) -> torch.Tensor:
        """Softmax of the betas over each node's incoming edges (PC edge normalisation)."""
        b = _at_least_fp32(betas)
        return torch.cat([torch.softmax(b[s : s + n], dim=-1) for s, n in self._node_slices])

    def path_weights(self, genotype: Genotype) -> dict[str, torch.Tensor]:
        """A genotype's cells as one-hot op weights on this supernet (its edges' rows; other rows are zero): given
        as `path` (`model(x, path=...)`, `fixed(...)`), the supernet computes that architecture with the shared
        weights (one-shot evaluation)."""
        out = {}
        device = self.arch[f"alpha_{self.cell_types[0]}"].device
        for kind, cell in zip(self.cell_types, (genotype.first, genotype.second), strict=True):
            w = torch.zeros(self.arch[f"alpha_{kind}"].shape)
            for (node, src), (op, _) in zip(cell.node_edges(), cell.edges, strict=True):
                w[self._node_slices[node][0] + src, PRIMITIVES.index(op)] = 1.0
            out[kind] = w.to(device)
        return out

    def weights(self, path: PathWeights | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Each cell type's (op weights, edge weights): the alphas' softmax (and the betas'), or a given path."""
        if path is not None:  # a fixed architecture on the shared weights (random search, one-shot evaluation)
            return {kind: (path[kind], None) for kind in self.cell_types}
        # softmaxes in fp32 even under autocast: the alphas are small and their differences matter
        out = {}
        for kind in self.cell_types:
            alpha = _at_least_fp32(self.arch[f"alpha_{kind}"])
            beta = self.arch[f"beta_{kind}"] if self.cfg.edge_norm else None
            out[kind] = (torch.softmax(alpha, dim=-1), None if beta is None else self.edge_weights(beta))
        return out

    def forward(self, x: torch.Tensor, path: PathWeights | None = None) -> torch.Tensor:
        """The logits of the relaxed supernet, or with `path` (op weights per cell type, `path_weights`) of that
        one architecture on the shared weights. Nothing is remembered between calls."""
        if self.backend is not None and self.training:
            with self.backend.context():
                return self.net(x, self.weights(path))
        return self.net(x, self.weights(path))

    def fixed(self, path: Genotype | PathWeights) -> FixedPath:
        """This supernet computing one architecture (a genotype, or its `path_weights`) on its shared weights,
        as a module whose plain `forward(x)` evaluation loops can call; the supernet itself is unchanged."""
        return FixedPath(self, self.path_weights(path) if isinstance(path, Genotype) else path)

    def genotype(self) -> Genotype:
        alphas = [self.arch[f"alpha_{k}"] for k in self.cell_types]
        betas = [self.arch[f"beta_{k}"] for k in self.cell_types] if self.cfg.edge_norm else None
        return derive(alphas, betas, self.cfg.space)


class FixedPath(nn.Module):
    """A view of a supernet that always computes one architecture: `forward(x)` = `supernet(x, path=path)`.
    Its parameters and buffers are the supernet's (it holds no state of its own)."""

    def __init__(self, supernet: SuperNet, path: PathWeights):
        super().__init__()
        self.supernet = supernet
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, path=self.path)


def count_parameters(module: nn.Module, exclude: str = "auxiliary") -> int:
    return sum(p.numel() for name, p in module.named_parameters() if exclude not in name)


def count_macs(model: nn.Module, in_channels: int, size: int) -> int:
    """Multiply-accumulates of one image at inference: convolutions and linear layers, biases excluded.

    Counted with forward hooks rather than torch's FlopCounterMode, whose dispatch mode imports torch._dynamo
    (~150 MB resident for the rest of the run); tests check the two agree.
    """
    total = 0

    def hook(module: nn.Module, args, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += out.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += out.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()  # no auxiliary head, no drop-path
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # pools: no parameters
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def fixed_cell_factory(genotype: Genotype):
    """A cell factory that builds each cell type from its genotype cell (affine BN, drop-path ready)."""

    def make_cell(kind: str, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool) -> Cell:
        cell_g = genotype.cell(kind)

        def make_edge(i: int, c_: int, stride: int) -> nn.Module:
            return make_op(cell_g.edges[i][0], c_, stride, affine=True)

        return Cell(cell_g.node_edges(), make_edge, c_pp, c_p, c, reduction, reduction_prev, True, cell_g.concat)

    return make_cell


class TrainedBackend(Protocol):
    """What a trained network asks of a backend (bnas.fast.TRAINED): prepare its modules, and a block to run in."""

    def adopt(self, net: nn.Module) -> None: ...

    def context(self) -> contextlib.AbstractContextManager: ...


class TrainedNet(nn.Module):
    """A network built from a genotype with the same wiring as the supernet it came from.

    `backend` (bnas.fast.TRAINED, or None for the plain modules) computes the same forward with less work;
    the parameters and the state dict are the plain modules'."""

    def __init__(self, net: BroadNet | DeepNet, genotype: Genotype, backend: TrainedBackend | None = None):
        super().__init__()
        self.net = net
        self.genotype = genotype
        self.drop_prob = 0.0
        self.backend = backend
        if backend is not None:
            backend.adopt(self.net)

    @property
    def has_auxiliary(self) -> bool:
        """Whether the network was built with DARTS' auxiliary head (a fact of its structure, not a mode)."""
        return getattr(self.net, "auxiliary", None) is not None

    def forward(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """The logits; `with_aux` (the training step): (logits, the auxiliary head's logits or None), where the
        auxiliary head (DARTS networks built with one) runs in training mode only."""
        if self.backend is not None:
            with self.backend.context():
                return self.net(x, None, self.drop_prob, with_aux=with_aux)
        return self.net(x, None, self.drop_prob, with_aux=with_aux)


def build_network(
    genotype: Genotype,
    channels: int = 48,
    layers: int = 6,
    enhance: int = 2,
    num_classes: int = 10,
    in_channels: int = 3,
    stem: str = "cifar",
    blocks: int = 2,
    auxiliary: bool = False,
    backend: TrainedBackend | None = None,
) -> TrainedNet:
    """The trained network of SPEC §8 (bcnn) or DARTS' evaluation network (darts) for a genotype; `backend`
    (bnas.fast.TRAINED) computes the same forward with less work."""
    make_cell = fixed_cell_factory(genotype)
    mult = 3 if stem == "cifar" else 1  # trained ImageNet networks: stem C/2 -> C -> C (SPEC §8)
    if genotype.space == "bcnn":
        if layers % blocks:
            raise ValueError(f"--layers {layers} must be a multiple of the {blocks} convolution blocks")
        shape = BroadShape(channels, num_classes, in_channels, blocks, layers // blocks - 1, enhance, stem, mult)
        net: BroadNet | DeepNet = BroadNet(shape, make_cell, affine=True)
    else:
        shape = DeepShape(channels, num_classes, in_channels, layers, stem, mult, auxiliary)
        net = DeepNet(shape, make_cell, True)
    return TrainedNet(net, genotype, backend)
