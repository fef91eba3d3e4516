"""The machine the benchmark ran on, and the two speed floors from DESIGN.md measured on it.

- single-stream floor: decoding one sequence reads every weight once per token, so it cannot
  beat `memory bandwidth / weight bytes` tokens/s;
- batch floor: every token costs ~2 FLOP per parameter, so a full batch cannot beat
  `matmul FLOP/s / (2 * parameters)` tokens/s.
Both are measured here, in the engine's dtype, with the same torch threads as the run.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from labs.engine.cpu_share import machine_busy_seconds


@dataclass(frozen=True)
class Floors:
    dtype: str  # what the linear layers compute in: "float32", "int8", ...
    weight_bytes: int
    parameters: int
    bandwidth_gb_s: float  # best of a large copy (read + written) and a large sum (read)
    matmul_gflop_s: float  # 1024x1024 matmul in `dtype`

    @property
    def single_stream_tok_s(self) -> float:
        return self.bandwidth_gb_s * 1e9 / self.weight_bytes

    @property
    def batch_tok_s(self) -> float:
        return self.matmul_gflop_s * 1e9 / (2 * self.parameters)


def measure_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Best-of memory bandwidth in GB/s over a buffer far larger than the caches: the higher of
    a copy (counting the bytes read and written) and a sum (bytes read)."""
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    nbytes = source.numel() * source.element_size()
    copy = _best_time(lambda: target.copy_(source), repeats)
    read = _best_time(lambda: source.sum(), repeats)
    return max(2 * nbytes / copy, nbytes / read) / 1e9


def _best_time(work: Callable[[], object], repeats: int) -> float:
    work()  # first touch and warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def measure_int8_gops(size: int = 1024, loops: int = 10, repeats: int = 3) -> float:
    """Best-of giga int8 multiply-adds x 2 per second of a square `torch._int_mm` loop."""
    a = torch.randint(-127, 127, (size, size), dtype=torch.int8)
    b = torch.randint(-127, 127, (size, size), dtype=torch.int8).t()  # the layout Int8Linear uses

    def work() -> None:
        for _ in range(loops):
            torch._int_mm(a, b)
    return 2 * size**3 * loops / _best_time(work, repeats) / 1e9


def measure_matmul_gflops(dtype: torch.dtype, size: int = 1024, loops: int = 10, repeats: int = 3) -> float:
    """Best-of GFLOP/s of a square matmul loop in `dtype`."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    out = torch.empty(size, size, dtype=dtype)

    def work() -> None:
        for _ in range(loops):
            torch.matmul(a, b, out=out)

    return 2 * size**3 * loops / _best_time(work, repeats) / 1e9


def measure_floors(model: Any) -> Floors:
    """Floors for the model as the engine runs it. A token reads every weight except the input
    embedding table (it looks up one row; a tied output head still reads it all), and costs 2
    operations per weight of the matrix products. Int8 layers keep their weights in buffers,
    and their rate is that of int8 (`torch._int_mm`)."""
    from torch import nn

    from labs.models.int8 import Int8Linear

    modules = list(model.modules())
    matmul = {m.weight.data_ptr(): m.weight for m in modules if isinstance(m, nn.Linear)}
    matmul |= {m.qweight.data_ptr(): m.qweight for m in modules if isinstance(m, Int8Linear)}
    lookups = {m.weight.data_ptr() for m in modules if isinstance(m, nn.Embedding)} - set(matmul)
    read = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()] if t.data_ptr() not in lookups}
    dtype = next(model.parameters()).dtype
    int8 = any(isinstance(m, Int8Linear) for m in modules)
    return Floors(
        dtype="int8" if int8 else str(dtype).removeprefix("torch."),
        weight_bytes=sum(t.numel() * t.element_size() for t in read.values()),
        parameters=sum(t.numel() for t in matmul.values()),
        bandwidth_gb_s=measure_bandwidth(),
        matmul_gflop_s=measure_int8_gops() if int8 else measure_matmul_gflops(dtype),
    )


class OtherLoad:
    """Average number of cores that *other* processes kept busy since construction.

    System-wide busy CPU time (/proc/stat) minus the CPU time of `pids` (this process and the
    servers it started, with their waited-for children). Near 0 means the measurement had the
    machine to itself; 0.5 means something else used half a core on average and the numbers
    are disturbed. NaN where /proc is not available.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._started = time.perf_counter()
        self._busy = machine_busy_seconds()
        self._own = sum(_process_ticks(pid) for pid in pids)

    def cores(self) -> float:
        wall = time.perf_counter() - self._started
        now = machine_busy_seconds()
        if now is None or self._busy is None or wall <= 0:
            return float("nan")
        own = (sum(_process_ticks(pid) for pid in self.pids) - self._own) / os.sysconf("SC_CLK_TCK")
        return max(now - self._busy - own, 0) / wall


def _process_ticks(pid: int) -> float:
    """utime + stime + cutime + cstime of a process (clock ticks)."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": fields[0] is the state (field 3)
    return float(sum(int(f) for f in fields[11:15]))


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags_of_note() -> str:
    flags: set[str] = set()
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def ram_gib() -> float:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def git_revision(repo: Path) -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def describe_machine(repo: Path) -> dict[str, str]:
    import transformers

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} logical, torch threads {torch.get_num_threads()}",
        "cpu flags": cpu_flags_of_note(),
        "ram": f"{ram_gib():.1f} GiB",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "labs revision": git_revision(repo),
        "load average at start": " ".join(f"{x:.2f}" for x in load),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
