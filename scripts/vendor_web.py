"""Refresh the page's third-party browser libraries from the npm registry.

The versions live in labs/api/web/vendor/vendor.json; this script fetches exactly those
(`npm pack NAME@VERSION`, which checks the registry's integrity hash), copies the files the
manifest names next to it, and records each tarball's integrity in the manifest. Nothing is
fetched at run time: the copied files ship inside the Python package.

    uv run python scripts/vendor_web.py           # fetch and copy
    uv run python scripts/vendor_web.py --check   # only verify the copies match the registry's
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "labs" / "api" / "web" / "vendor"
MANIFEST = VENDOR / "vendor.json"


def pack(name: str, version: str, into: Path) -> tuple[Path, str]:
    """The package's tarball from the registry, and its integrity string."""
    done = subprocess.run(["npm", "pack", f"{name}@{version}", "--json", "--pack-destination", str(into)],
                          check=True, capture_output=True, text=True)
    info = json.loads(done.stdout)[0]
    return into / info["filename"], info["integrity"]


def extract(tarball: Path, into: Path) -> Path:
    with tarfile.open(tarball) as archive:
        archive.extractall(into, filter="data")
    return into / "package"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare the vendored files with the registry's, change nothing")
    args = parser.parse_args()
    manifest = json.loads(MANIFEST.read_text())
    differing: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        for package in manifest["packages"]:
            where = Path(scratch) / package["name"].replace("/", "_")
            where.mkdir()
            tarball, integrity = pack(package["name"], package["version"], where)
            root = extract(tarball, where)
            for source, target in package["files"].items():
                fetched, vendored = root / source, VENDOR / target
                if args.check:
                    if not vendored.exists() or vendored.read_bytes() != fetched.read_bytes():
                        differing.append(target)
                else:
                    shutil.copyfile(fetched, vendored)
            package["integrity"] = integrity
            print(f"{package['name']}@{package['version']}: {', '.join(package['files'].values())}")
    if args.check:
        if differing:
            print("differ from the registry: " + ", ".join(differing), file=sys.stderr)
            return 1
        return 0
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
