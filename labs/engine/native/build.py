"""Build the native kernels into a folder: `python -m labs.engine.native.build FOLDER NAME [--background]`.

Runs in its own process so a build can outlive the process that asked for it (a one-shot
`labs-gen`) and never blocks a serving engine's thread. An exclusive `flock` on the folder's
build.lock serialises builders (the kernel releases it if a builder dies), and the ready marker
is written only after the built module imported, so a reader never loads half a build.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from labs.engine.native import BUILD_LOCK, BUILD_LOG, COMPILE_FLAGS, FAILED_MARKER, LINK_FLAGS, READY_MARKER, SOURCE, _import_built


def build(folder: Path, name: str) -> None:
    from torch.utils.cpp_extension import load

    # Older torch versions lock with a file whose mere existence blocks, left behind when a build
    # is killed; holding build.lock means no other builder owns it, so a leftover one is stale.
    (folder / "lock").unlink(missing_ok=True)
    # ninja from the environment's own bin folder (the `ninja` package) when it is not on PATH
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    load(name=name, sources=[str(SOURCE)], build_directory=str(folder), extra_cflags=list(COMPILE_FLAGS),
         extra_ldflags=list(LINK_FLAGS), verbose=True)


def main(argv: list[str]) -> int:
    folder, name = Path(argv[0]), argv[1]
    if "--background" in argv:
        os.nice(10)  # leave the cores to the engine that is serving meanwhile
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / BUILD_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / READY_MARKER).exists():
            return 0
        (folder / FAILED_MARKER).unlink(missing_ok=True)
        started = time.monotonic()
        with open(folder / BUILD_LOG, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            os.dup2(log.fileno(), 1)  # the compiler writes to the process's own descriptors
            os.dup2(log.fileno(), 2)
            try:
                build(folder, name)
                _import_built(folder, name)
            except Exception as exc:  # noqa: BLE001  (any failure is recorded for the engine to report)
                print(f"build failed: {exc!r}", flush=True)
                (folder / FAILED_MARKER).write_text(json.dumps({"error": repr(exc)}))
                return 1
        (folder / READY_MARKER).write_text(json.dumps({"name": name, "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
