"""A small C kernel for the one CPU operation ATen does slowly here: the weight gradient of a depthwise conv.

ATen's CPU depthwise backward takes 2-20x the forward's time for 5x5 kernels (and far worse for tiny
images), which makes it the largest single cost of a DARTS-style search step. The weight gradient is a
per-channel sum of shifted products, a few lines of C that the compiler vectorises over channels. The
kernel is compiled on first use with the system C compiler into a per-user cache (about a second) and
loaded with ctypes, so nothing is built at install time; without a compiler everything falls back to
ATen and only speed changes. Set BNAS_NATIVE=0 to disable it; a run's runtime profile (bnas.profile) enables
it in the CPU profile only (`set_enabled`), so the CUDA profile forced on a CPU never runs it either.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_SOURCE = r"""
#include <string.h>
/* Depthwise-convolution weight gradient, channels-last: for images n0 <= n < n1 of
   x (N, H, W, C) and g (N, Ho, Wo, C), out[(i*k + j)*C + c] = sum g[n,ho,wo,c] * x[n, ho*s-p+i*d, wo*s-p+j*d, c]. */
void dw_weight_grad(const float *x, const float *g, float *out, long n0, long n1, long H, long W, long C,
                    long Ho, long Wo, long k, long s, long d, long p) {
    memset(out, 0, sizeof(float) * k * k * C);
    for (long n = n0; n < n1; n++)
        for (long ho = 0; ho < Ho; ho++)
            for (long i = 0; i < k; i++) {
                long hi = ho * s - p + i * d;
                if (hi < 0 || hi >= H) continue;
                for (long wo = 0; wo < Wo; wo++) {
                    const float *gp = g + ((n * Ho + ho) * Wo + wo) * C;
                    for (long j = 0; j < k; j++) {
                        long wi = wo * s - p + j * d;
                        if (wi < 0 || wi >= W) continue;
                        const float *xp = x + ((n * H + hi) * W + wi) * C;
                        float *a = out + (i * k + j) * C;
                        for (long c = 0; c < C; c++) a[c] += gp[c] * xp[c];
                    }
                }
            }
}
"""

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_pool: ThreadPoolExecutor | None = None
_enabled = True  # the run's profile decides (set_enabled); the environment's BNAS_NATIVE=0 always wins


def set_enabled(on: bool) -> bool:
    """Whether the kernel may run in this process (the runtime profile's `native_kernel`); returns the
    previous setting. Process-wide like torch.backends' switches, set once per run."""
    global _enabled
    before, _enabled = _enabled, bool(on)
    return before


def _cache_dir() -> Path:
    base = os.environ.get("BNAS_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bnas"


def _cpu_key() -> str:
    try:
        model = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{platform.machine()}-{model}"


def _build(cc: str, flags: list[str]) -> ctypes.CDLL:
    tag = hashlib.sha256((_SOURCE + " ".join(flags) + _cpu_key()).encode()).hexdigest()[:16]
    out = _cache_dir() / f"dwgrad-{tag}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src, lib = Path(tmp) / "dwgrad.c", Path(tmp) / "dwgrad.so"
            src.write_text(_SOURCE)
            subprocess.run([cc, *flags, "-shared", "-fPIC", str(src), "-o", str(lib)], check=True, capture_output=True)
            os.replace(lib, out)  # atomic: concurrent builders agree on the result
    dll = ctypes.CDLL(str(out))
    dll.dw_weight_grad.restype = None
    dll.dw_weight_grad.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 11
    return dll


def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it is disabled or cannot be built (then ATen is used)."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
            if os.environ.get("BNAS_NATIVE", "1") != "0" and cc:
                for flags in (["-O3", "-march=native"], ["-O3"]):
                    try:
                        _lib = _build(cc, flags)
                        break
                    except (OSError, subprocess.CalledProcessError):
                        continue
            _tried = True
    return _lib


def dw_weight_grad(x: torch.Tensor, g: torch.Tensor, kernel: int, stride: int, dilation: int, padding: int):
    """Weight gradient (C, 1, k, k) of a depthwise conv of x giving g, or None when the kernel cannot run it.

    Runs on float32 CPU channels-last tensors; the batch is split across torch's intra-op threads (ctypes
    releases the GIL) and the partial sums are added.
    """
    if not _enabled or x.device.type != "cpu" or x.dtype != torch.float32 or g.dtype != torch.float32:
        return None  # before `library()`: a GPU run (or the CUDA profile) never builds the kernel
    lib = library()
    if lib is None:
        return None
    n, c, h, w = x.shape
    ho, wo = g.shape[-2:]
    xl = x.permute(0, 2, 3, 1).contiguous()  # a view when x is channels-last
    gl = g.permute(0, 2, 3, 1).contiguous()
    workers = max(1, min(torch.get_num_threads(), n))
    out = torch.empty(workers, kernel * kernel, c)
    bounds = [n * i // workers for i in range(workers + 1)]

    def part(i: int) -> None:
        lib.dw_weight_grad(
            xl.data_ptr(), gl.data_ptr(), out[i].data_ptr(), bounds[i], bounds[i + 1],
            h, w, c, ho, wo, kernel, stride, dilation, padding,
        )  # fmt: skip

    if workers == 1:
        part(0)
    else:
        global _pool
        if _pool is None or _pool._max_workers < workers - 1:  # noqa: SLF001
            _pool = ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix="bnas-native")
        futures = [_pool.submit(part, i) for i in range(1, workers)]
        part(0)
        for f in futures:
            f.result()
    return out.sum(0).t().reshape(c, 1, kernel, kernel)
