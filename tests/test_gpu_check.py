"""benchmarks/gpu_check.py --dry-run: every check of the GPU script runs its code path on the CPU, so the few
minutes of a GPU session are not spent finding a typo."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STATUSES = {"ok", "failed", "skipped (budget)", "skipped (dry-run)"}


def _run(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    path = os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + (os.pathsep + path if path else ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("BNAS_PROFILE", None)  # the dry run's own choice
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((out / "gpu_check.json").read_text())


def test_dry_run_exercises_every_check(tmp_path):
    done, rec = _run(tmp_path)
    checks = {c["name"]: c for c in rec["checks"]}
    assert rec["dry_run"] and rec["finished"]
    assert all(c["status"] in STATUSES for c in checks.values()), {n: c["status"] for n, c in checks.items()}
    ran = {n for n, c in checks.items() if c["status"] != "skipped (dry-run)"}
    failed = {n: c["error"] for n, c in checks.items() if c["status"] != "ok" and n in ran}
    assert not failed, failed
    expected = {"environment", "gradients_clr", "gradients_pc", "bf16_search", "bf16_train", "torchrun_train_eval",
                "dist_allreduce", "search_epoch_clr_auto", "bench_train_fp32", "projection"}  # fmt: skip
    expected |= {f"sync_{m}_o{o}" for m in ("bnas-d", "clr", "pc") for o in (1, 2)}
    assert expected <= ran
    assert any(n.startswith("bench_search_") for n in ran)
    # one progress line per check, in order
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("[")]
    assert [ln.split("] ", 1)[1].split()[0] for ln in lines] == list(checks)

    for method in ("clr", "pc"):
        g = checks[f"gradients_{method}"]["result"]
        assert g["arch_max_rel_err"] < 1e-4 and g["weight_max_rel_err"] < 1e-3 and g["arch_grads_nonzero"], g
    tr = checks["torchrun_train_eval"]["result"]
    assert tr["results_json"] and tr["results"]["final_epoch"]["test_top1"] is not None
    assert tr["eval"]["images"] > 0 and tr["eval_equals_results"]
    assert checks["dist_allreduce"]["result"]["backend"] == "gloo"
    assert checks["projection"]["result"]["minutes"] > 0
    # the dry run takes the CUDA profile's code path on the CPU (bnas/profile.py)
    profile = checks["environment"]["result"]["profile"]
    assert (profile["profile"], profile["optimizer"], profile["amp"], profile["native_kernel"]) == (
        "cuda", "torch-fused", "bf16", False)  # fmt: skip
    sync = checks["sync_clr_o1"]["result"]
    assert (sync["profile"], sync["optimizer"], sync["cells"], sync["amp"]) == ("cuda", "torch-fused", "plain", "bf16")

    md = (tmp_path / "gpu_check.md").read_text()
    assert "| check | status | s | result |" in md and "| benchmark | status |" in md
    assert "Projected 50-epoch CIFAR-10 CLR search" in md and "min" in md


def test_checks_past_the_budget_are_skipped_not_lost(tmp_path):
    _, rec = _run(tmp_path, "--budget-s", "0")
    status = {c["name"]: c["status"] for c in rec["checks"]}
    assert status.pop("environment") == "ok" and status.pop("projection") == "ok"  # cheap: they always run
    assert set(status.values()) <= {"skipped (budget)", "skipped (dry-run)"}
    assert "no figure" in (tmp_path / "gpu_check.md").read_text()
