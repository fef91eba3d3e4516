"""How many threads torch should use right now: the CPUs this process may use, less what others take.

Why: every parallel op of torch's OpenMP team ends at a barrier that waits for its slowest thread.
When another process keeps one of our cores busy, the thread on that core runs only when the
scheduler gives it a slice, and every op waits for it: measured on a 2-core machine with a plain
busy loop in another process, one client fell from ~34 to 0.8 tok/s, and a 1x576 by 576x1536
matmul from 37 us to several ms. One thread fewer keeps about half the speed, the fair share.
So the torch thread asks `CpuShare.threads()` between engine steps and resizes its team when the
answer changes.

What counts: the CPUs in this process's affinity mask, capped by a cgroup CPU quota (a container's
`--cpus`); "others" are the CPU time on the machine not spent by this process (from /proc/stat,
steal time included: a hypervisor that deschedules a vCPU stalls the barrier the same way),
measured over the last `interval` seconds.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# A core counts as taken once others keep it busy more than this share of the time: even a
# third of a core descheduling our thread now and then costs more than the thread brings.
TAKEN_SHARE = 0.3


def allowed_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota if one is set."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota in cores (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def machine_busy_seconds(stat: Path = Path("/proc/stat")) -> float | None:
    """CPU seconds all processes have spent since boot (user, nice, system, irq, softirq, steal)."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:9]] + [0] * (9 - len(fields))  # old kernels have no steal column
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_busy_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Sample:
    at: float
    machine: float
    own: float


class CpuShare:
    """Decides the torch team size from what other processes have used lately.

    `limit` caps it (a configured thread count, or torch's default); `threads()` is cheap when
    called more often than `interval` (it returns the last answer).
    """

    def __init__(self, limit: int, interval: float = 0.5, *, clock: Callable[[], float] = time.monotonic,
                 machine: Callable[[], float | None] = machine_busy_seconds,
                 own: Callable[[], float] = own_busy_seconds, cpus: int | None = None) -> None:
        self.cpus = cpus if cpus is not None else allowed_cpus()
        self.limit = max(1, min(limit, self.cpus))
        self.interval = interval
        self._clock, self._machine, self._own = clock, machine, own
        self._last = self._sample()
        self._threads = self.limit
        self.others = 0.0  # cores other processes kept busy in the last window

    def _sample(self) -> Sample | None:
        machine = self._machine()
        return None if machine is None else Sample(self._clock(), machine, self._own())

    def threads(self) -> int:
        if self._last is None or self._clock() - self._last.at < self.interval:
            return self._threads
        now = self._sample()
        if now is None:
            return self._threads
        elapsed = now.at - self._last.at
        others = ((now.machine - self._last.machine) - (now.own - self._last.own)) / elapsed
        self._last, self.others = now, max(0.0, others)
        taken = math.floor(self.others + 1.0 - TAKEN_SHARE)  # cores that others hold for good
        threads = max(1, min(self.limit, self.cpus - taken))
        if threads != self._threads:
            logger.info("other processes keep %.2f cores busy: torch now uses %d thread(s) of %d",
                        self.others, threads, self.limit)
            self._threads = threads
        return threads
