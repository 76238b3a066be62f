"""`--compile BACKEND` (issue 7): torch.compile changes nothing but speed. The eager backend runs dynamo's
tracing and graph breaks without code generation, so a compiled run must equal a plain one bit for bit."""

import pytest
import torch

from bnas.cells import Cell
from bnas.search import SearchConfig, Searcher
from bnas.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()  # compiling in place keeps parameter names (checkpoints, resume)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_compiled_search_equals_the_plain_cells(tmp_path):
    kw = dict(dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, epochs=1, eval_every=0,
              quiet=True)  # fmt: skip
    plain = Searcher(SearchConfig.resolve("clr", fast=False, out=str(tmp_path / "p"), **kw))
    plain.run_search()
    compiled = Searcher(SearchConfig.resolve("clr", compile="eager", out=str(tmp_path / "c"), **kw))
    assert compiled.model.backend is None  # the fast cells' run-time gradient queries do not survive tracing
    cells = [m for m in compiled.model.net.modules() if isinstance(m, Cell)]
    assert cells and all(c._compiled_call_impl is not None for c in cells)  # regional: each cell, in place
    assert compiled.model.net._compiled_call_impl is None  # not the whole supernet
    compiled.run_search()
    _same_state(plain.model.state_dict(), compiled.model.state_dict())


def test_compiled_training_equals_plain_training(tmp_path):
    kw = dict(dataset="synthetic", synthetic_size=32, batch_size=8, eval_batch_size=16, init_channels=4, layers=2,
              enhance_cells=1, epochs=1, quiet=True, log_every=0)  # fmt: skip
    plain = Trainer(TrainConfig.resolve(out=str(tmp_path / "p"), **kw))
    plain.run_training()
    compiled = Trainer(TrainConfig.resolve(compile="eager", out=str(tmp_path / "c"), **kw))
    compiled.run_training()
    _same_state(plain.model.state_dict(), compiled.model.state_dict())
