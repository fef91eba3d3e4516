"""The torch team follows the cores other processes leave free (labs.engine.cpu_share)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labs.config import load_settings
from labs.errors import ConfigError
from labs.engine.cpu_share import CpuShare, allowed_cpus, cgroup_cpu_quota, machine_busy_seconds
from labs.engine.torch_thread import torch_thread


class FakeMachine:
    """A clock, the machine's busy seconds and ours, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0
        self.machine = 100.0
        self.own = 10.0

    def advance(self, seconds: float, *, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += own_cores * seconds
        self.machine += (own_cores + other_cores) * seconds

    def share(self, limit: int, cpus: int) -> CpuShare:
        return CpuShare(limit, 0.5, clock=lambda: self.now, machine=lambda: self.machine, own=lambda: self.own, cpus=cpus)


def test_a_core_taken_by_another_process_costs_one_thread_and_comes_back() -> None:
    fake = FakeMachine()
    share = fake.share(limit=2, cpus=2)
    assert share.threads() == 2
    fake.advance(0.6, own_cores=2.0, other_cores=0.05)  # quiet: a little noise
    assert share.threads() == 2
    fake.advance(0.6, own_cores=1.0, other_cores=1.0)  # a busy loop starts
    assert share.threads() == 1 and share.others == pytest.approx(1.0)
    fake.advance(0.6, own_cores=1.0, other_cores=1.0)  # our own use is never counted against us
    assert share.threads() == 1
    fake.advance(0.6, own_cores=1.0, other_cores=0.0)  # it stops
    assert share.threads() == 2


def test_the_share_is_only_recomputed_each_interval() -> None:
    fake = FakeMachine()
    share = fake.share(limit=2, cpus=2)
    fake.advance(0.2, own_cores=0.0, other_cores=2.0)
    assert share.threads() == 2  # too soon to look
    fake.advance(0.4, own_cores=0.0, other_cores=0.0)
    assert share.threads() == 1  # 0.4 core-seconds of others over the 0.6 s window


@pytest.mark.parametrize(("others", "threads"), [(0.0, 4), (0.29, 4), (0.31, 3), (1.0, 3), (1.5, 2), (2.8, 1), (9.0, 1)])
def test_threads_for_what_others_take(others: float, threads: int) -> None:
    fake = FakeMachine()
    share = fake.share(limit=4, cpus=4)
    fake.advance(1.0, own_cores=1.0, other_cores=others)
    assert share.threads() == threads


def test_the_limit_caps_the_team_and_never_exceeds_the_cpus() -> None:
    fake = FakeMachine()
    assert fake.share(limit=8, cpus=2).threads() == 2
    assert fake.share(limit=1, cpus=4).threads() == 1


def test_without_proc_stat_the_team_stays_as_it_is() -> None:
    share = CpuShare(3, 0.0, machine=lambda: None, cpus=4)
    assert share.threads() == 3 and share.threads() == 3


def test_cgroup_quotas_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(v2) == 1.5
    assert allowed_cpus(v2) == min(len(os.sched_getaffinity(0)), 2)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) == 0.5 and allowed_cpus(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(v1) is None
    assert cgroup_cpu_quota(tmp_path / "nothing") is None


def test_machine_busy_seconds_reads_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    tick = os.sysconf("SC_CLK_TCK")
    stat.write_text(f"cpu  {tick} 0 {tick} 5000 7 0 0 {tick} 0 0\ncpu0 1 2 3\n")
    assert machine_busy_seconds(stat) == pytest.approx(3.0)  # user + system + steal; idle and iowait are not busy
    stat.write_text("intr 1 2 3\n")
    assert machine_busy_seconds(stat) is None
    assert machine_busy_seconds(tmp_path / "missing") is None


def test_the_real_machine_sees_a_busy_loop() -> None:
    """On this machine, for real: a busy loop in another process is seen as about one core."""
    if machine_busy_seconds() is None:
        pytest.skip("no /proc/stat here")
    share = CpuShare(limit=64, interval=1.0)
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.2)
        share.threads()
    finally:
        loop.kill()
        loop.wait()
    assert share.others > 0.7


def test_cpu_threads_setting_is_checked_and_reaches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABS_CPU_THREADS", "1")
    assert load_settings().engine.cpu_threads == 1
    monkeypatch.setenv("LABS_CPU_THREADS", "auto")
    assert load_settings().engine.cpu_threads == "auto"
    monkeypatch.setenv("LABS_CPU_THREADS", "many")
    with pytest.raises(ConfigError, match=r'expected "auto" or an integer >= 1'):
        load_settings()
    monkeypatch.setenv("LABS_CPU_THREADS", "0")
    with pytest.raises(ConfigError, match="LABS_CPU_THREADS"):
        load_settings()
    worker = torch_thread()
    before = worker.cpu_threads
    try:
        worker.use_cpu_threads(1)
        assert worker.cpu_threads == 1
    finally:
        worker.use_cpu_threads("auto")
    assert 1 <= worker.cpu_threads <= max(before, allowed_cpus())
