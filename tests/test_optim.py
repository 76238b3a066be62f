"""bnas.optim's SGD and Adam give torch.optim's results bit for bit, and their state dicts interchange."""

import pytest
import torch

from bnas.optim import SGD, Adam


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in ((5, 3), (7,), (2, 3, 3, 3))]


def _run(opt, params, steps: int, seed: int, lrs=None) -> None:
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        if lrs:
            for group in opt.param_groups:
                group["lr"] = lrs[i]
        for j, p in enumerate(params):
            # the second parameter has no gradient on odd steps: skipped, as torch.optim does
            p.grad = None if (j == 1 and i % 2) else torch.randn(p.shape, generator=g)
        opt.step()


CASES = [
    (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=3e-4)),
    (SGD, torch.optim.SGD, dict(lr=0.05)),
    (Adam, torch.optim.Adam, dict(lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)),
    (Adam, torch.optim.Adam, dict(lr=1e-2)),
]


@pytest.mark.parametrize(("ours", "theirs", "kw"), CASES)
def test_same_updates_as_torch_optim(ours, theirs, kw):
    a, b = _params(0), _params(0)
    _run(ours(a, **kw), a, 6, seed=1, lrs=[0.1, 0.09, 0.05, 0.02, 0.01, 0.001])
    _run(theirs(b, **kw), b, 6, seed=1, lrs=[0.1, 0.09, 0.05, 0.02, 0.01, 0.001])
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(("ours", "theirs", "kw"), CASES)
def test_state_dicts_interchange_with_torch_optim(ours, theirs, kw):
    """Resume in either direction: 3 steps, save, load into the other class, 3 more steps == 6 steps of torch."""
    ref = _params(0)
    _run(theirs(ref, **kw), ref, 6, seed=2)
    for first, second in ((ours, theirs), (theirs, ours)):
        params = _params(0)
        opt = first(params, **kw)
        g = torch.Generator().manual_seed(2)
        for i in range(6):
            if i == 3:
                state = opt.state_dict()
                opt = second(params, **kw)
                opt.load_state_dict(state)
            for j, p in enumerate(params):
                p.grad = None if (j == 1 and i % 2) else torch.randn(p.shape, generator=g)
            opt.step()
        for p, q in zip(params, ref, strict=True):
            assert torch.equal(p, q), (first, second)


def test_zero_grad_and_mismatched_state():
    params = _params(0)
    opt = SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    with pytest.raises(ValueError, match="different number of parameters"):
        SGD(params[:2], lr=0.1).load_state_dict(opt.state_dict())


def test_no_dynamo_import():
    """The reason the module exists: a search process never imports torch._dynamo (150 MB resident)."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from bnas.search import SearchConfig, Searcher\n"
        "cfg = SearchConfig.resolve('clr', dataset='synthetic', synthetic_size=32, batch_size=8, init_channels=4,"
        " epochs=1, eval_every=0, quiet=True, out=sys.argv[1])\n"
        "Searcher(cfg).run_search()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([sys.executable, "-c", code, d + "/r"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize(("ours", "theirs", "kw"), CASES)
def test_a_masked_step_is_skipped_on_the_device(ours, theirs, kw):
    """step(mask): True is the plain step bit for bit; False leaves parameters and moments as they were,
    even with NaN gradients, and the mask is never read by the host."""
    a, b = _params(0), _params(0)
    opt_a, opt_b = ours(a, **kw), theirs(b, **kw)
    g = torch.Generator().manual_seed(3)
    for i in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in a]
        bad = i == 2
        for p, q, gr in zip(a, b, grads, strict=True):
            p.grad = torch.full_like(gr, float("nan")) if bad else gr.clone()
            q.grad = gr.clone()
        before = [p.clone() for p in a]
        opt_a.step(mask=torch.tensor(not bad))
        if bad:
            assert all(torch.equal(p, q) for p, q in zip(a, before, strict=True))
        else:
            opt_b.step()
    if ours is SGD:  # Adam counts the skipped step in its bias correction (documented): close, not equal
        for p, q in zip(a, b, strict=True):
            assert torch.equal(p, q)
    else:
        for p, q in zip(a, b, strict=True):
            assert torch.allclose(p, q, rtol=0, atol=0.2 * kw["lr"])  # a fraction of one step
    assert all(torch.isfinite(p).all() for p in a)
