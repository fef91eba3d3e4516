"""The one thread of the process that runs torch: model loading and every engine step.

Why one thread: torch's CPU kernels parallelise with OpenMP, and libgomp gives each OS thread
that opens parallel regions its own team of workers. With a second team alive, the process has
more OpenMP threads than cores and libgomp throttles its workers' spinning, so every parallel
op pays a futex wake-up: measured here, the same decode step ran at 15 tok/s on a second thread
against 28 tok/s on the first (bmm 10 us -> 70 us). Keeping all torch work on one thread keeps
one team. Engines register here and are stepped in turn whenever no call is pending.

The team's size follows the cores other processes leave free (labs.engine.cpu_share) unless a
fixed count is configured: resized only here, between steps, so no op changes team mid-way.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Protocol, TypeVar

from labs.engine.cpu_share import CpuShare

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Steppable(Protocol):
    @property
    def has_work(self) -> bool: ...

    def run_once(self) -> None: ...


class TorchThread:
    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._engines: list[Steppable] = []
        self._wakeup = threading.Event()
        self._share: CpuShare | None = None
        self._team = 0  # threads torch was last set to (0: not yet chosen here)
        self._default_team: int | None = None  # torch's own choice, before labs changed it
        self._thread = threading.Thread(target=self._loop, name="labs-torch", daemon=True)
        self._thread.start()

    @property
    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[[], T]) -> "Future[T]":
        future: Future[T] = Future()
        self._calls.put((fn, future))
        self._wakeup.set()
        return future

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the torch thread and wait for its result (exceptions propagate)."""
        if self.is_current:
            return fn(*args, **kwargs)
        return self.submit(lambda: fn(*args, **kwargs)).result()

    def register(self, engine: Steppable) -> None:
        self.call(self._engines.append, engine)

    def unregister(self, engine: Steppable) -> None:
        self.call(lambda: self._engines.remove(engine) if engine in self._engines else None)

    def wake(self) -> None:
        self._wakeup.set()

    def use_cpu_threads(self, setting: str | int) -> None:
        """`"auto"`: fit the team to the cores other processes leave free; a number: fix it."""
        self.call(self._use_cpu_threads, setting)

    @property
    def cpu_threads(self) -> int:
        """The team size torch uses now."""
        import torch

        return self.call(torch.get_num_threads)

    def _use_cpu_threads(self, setting: str | int) -> None:
        import torch

        if self._default_team is None:
            self._default_team = torch.get_num_threads()
        if setting == "auto":
            if self._share is None:
                self._share = CpuShare(self._default_team)
            self._fit_team()
            return
        self._share = None
        self._set_team(int(setting))

    def _fit_team(self) -> None:
        if self._share is not None:
            threads = self._share.threads()
            if threads != self._team:
                self._set_team(threads)

    def _set_team(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self._team = threads

    def _loop(self) -> None:
        while True:
            self._run_calls()
            self._fit_team()
            busy = [engine for engine in self._engines if engine.has_work]
            if not busy:
                self._wakeup.wait(timeout=0.5)
                self._wakeup.clear()
                continue
            for engine in busy:
                engine.run_once()

    def _run_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)


_instance: TorchThread | None = None
_instance_lock = threading.Lock()


def torch_thread() -> TorchThread:
    """The process's torch thread (started on first use)."""
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = TorchThread()
        return _instance
