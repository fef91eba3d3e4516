"""Fused C++ row kernels for the int8 CPU forward, compiled on this machine on first use.

Why: at batch 32 a decode step of a small model spends a fifth of its time in elementwise work
(RMSNorm, quantizing activations, dequantizing products, rotary, SiLU) that PyTorch runs as ~40
separate passes and allocations per layer; `kernels.cpp` does each group in one pass over the
row, vectorized for this CPU (-march=native). Measured in docs/benchmarks.md.

How they are built: `torch.utils.cpp_extension` with the machine's C++ compiler and ninja, into
`<cache_dir>/native/<key>`; the key hashes the source, torch, Python, the compiler and the CPU's
flags, so a change of any of them builds afresh and nothing stale is ever loaded. Modes:

- "auto": use the kernels when already built. Otherwise start the build in a detached,
  low-priority background process (it survives a one-shot `labs-gen`) and run the PyTorch path
  meanwhile; `NativeKernels.poll()` says when the build is ready. Without a compiler, or after a
  failed build, the PyTorch path runs and the reason is logged once.
- "on": build now, waiting for it (~25 s the first time), and fail with the compiler's output
  if it cannot.
- "off": never.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

from labs.errors import LabsError

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.cpp")
# -fopenmp: at::parallel_for splits work over torch's threads only in code built with OpenMP (it
# runs serially otherwise); the module then shares torch's own libgomp and its thread count.
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math")
LINK_FLAGS = ("-fopenmp",)
MODES = ("auto", "on", "off")
READY_MARKER = "ready.json"
FAILED_MARKER = "failed.json"
BUILD_LOG = "build.log"
BUILD_LOCK = "build.lock"


class NativeKernelsError(LabsError):
    """The native kernels were required (mode "on") and cannot be built or loaded."""


def default_cache_dir() -> Path:
    """Where engines built without a cache_dir keep the kernels: the configuration's own default."""
    return Path(os.environ.get("LABS_CACHE_DIR") or "~/.cache/labs").expanduser()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def missing_toolchain() -> str | None:
    """None when this machine can build the kernels, else what is missing and how to get it."""
    if platform.system() != "Linux":
        return f"native kernels are built on Linux only (this is {platform.system()})"
    if _compiler() is None:
        return "no C++ compiler found (install g++, or point CXX at one)"
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.exists():
        return f"Python development headers are missing ({header}; install python3-dev)"
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.machine()


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return compiler


def build_key() -> str:
    """Name of this build: changes with the source, torch, Python, compiler or CPU."""
    import torch

    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), sys.version.encode(), " ".join(COMPILE_FLAGS + LINK_FLAGS).encode(),
                 _compiler_version(_compiler() or "c++").encode(), _cpu_flags().encode()):
        digest.update(part)
        digest.update(b"\0")
    return f"labs_native_{digest.hexdigest()[:16]}"


def _import_built(folder: Path, name: str) -> ModuleType:
    import torch  # noqa: F401  (the extension links against torch's libraries, loaded by this import)

    path = folder / f"{name}.so"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log_tail(folder: Path, lines: int = 25) -> str:
    try:
        return "\n".join((folder / BUILD_LOG).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no build log)"


class NativeKernels:
    """One process's view of the kernels' build: `module` once loaded, else None."""

    def __init__(self, mode: str = "auto", cache_dir: Path | None = None) -> None:
        if mode not in MODES:
            raise NativeKernelsError(f"native_kernels must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.module: ModuleType | None = None
        self.unavailable: str | None = None  # why the PyTorch path runs, once settled
        self._builder: subprocess.Popen | None = None
        self._key = ""
        self._folder = Path()
        if mode == "off":
            self.unavailable = "native_kernels = off"
            return
        missing = missing_toolchain()
        if missing is not None:
            self._give_up(missing)
            return
        self._key = build_key()
        self._folder = (cache_dir or default_cache_dir()) / "native" / self._key
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._give_up(f"cannot create {self._folder} ({exc.strerror}); point cache_dir at a writable folder")
            return
        if (self._folder / READY_MARKER).exists():
            self._load()
        elif mode == "on":
            self._build(wait=True)
            self._load()
        elif (self._folder / FAILED_MARKER).exists():
            self._give_up(f"the build failed earlier (log: {self._folder / BUILD_LOG}); set native_kernels = on to retry and see why")
        else:
            self._build(wait=False)

    @property
    def pending(self) -> bool:
        """A background build is running; `poll()` picks up its result."""
        return self.module is None and self.unavailable is None

    def poll(self) -> ModuleType | None:
        """The module once the background build is ready (cheap to call between steps)."""
        if not self.pending:
            return self.module
        if self._builder is not None:
            code = self._builder.poll()
            if code is None:
                return None
            self._builder = None
            if code != 0:
                self._give_up(f"the background build failed (exit {code}); see {self._folder / BUILD_LOG}:\n{_log_tail(self._folder)}")
                return None
        if (self._folder / READY_MARKER).exists():
            self._load()
        elif self._builder is None and not self._build_in_progress():
            self._give_up(f"the build stopped without a result; see {self._folder / BUILD_LOG}")
        return self.module

    def wait(self) -> ModuleType | None:
        """Block until a pending build settles (tests and benchmarks that need a fixed path)."""
        if self.pending:  # only in auto mode: a failure leaves the PyTorch path, as in the background
            try:
                self._build(wait=True)
            except NativeKernelsError as exc:
                self._give_up(str(exc))
                return None
            self._load()
        return self.module

    def _build_in_progress(self) -> bool:
        with open(self._folder / BUILD_LOCK, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False

    def _build(self, wait: bool) -> None:
        command = [sys.executable, "-m", "labs.engine.native.build", str(self._folder), self._key]
        if wait and (self._folder / READY_MARKER).exists():
            return
        if wait:
            logger.info("building the native kernels into %s (once per machine, ~25 s)", self._folder)
            result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if result.returncode != 0:
                raise NativeKernelsError(
                    f"building the native kernels failed (exit {result.returncode}); compiler output:\n{_log_tail(self._folder)}\n"
                    "Fix the toolchain, or set native_kernels = auto (falls back to PyTorch) or off.")
            return
        if self._build_in_progress():
            logger.info("native kernels: another process is building them; the PyTorch path runs until they are ready")
            return
        logger.info("native kernels: building in the background into %s; the PyTorch path runs until they are ready", self._folder)
        self._builder = subprocess.Popen(command + ["--background"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)

    def _load(self) -> None:
        try:
            self.module = _import_built(self._folder, self._key)
        except (ImportError, OSError) as exc:
            message = f"the built native kernels in {self._folder} do not load ({exc}); delete that folder to rebuild"
            if self.mode == "on":
                raise NativeKernelsError(message) from exc
            self._give_up(message)
            return
        logger.info("native kernels loaded from %s", self._folder)

    def _give_up(self, reason: str) -> None:
        if self.mode == "on":
            raise NativeKernelsError(f"native_kernels = on, but {reason}")
        self.unavailable = reason
        logger.info("native kernels unavailable, running the PyTorch path: %s", reason)

