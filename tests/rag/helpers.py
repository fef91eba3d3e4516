"""Paths and small CSV writers shared by the transactions tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
CSV = REPO / "data" / "all_transactions.csv"
SCRIPT = REPO / "scripts" / "make_transactions.py"


def write(tmp_path: Path, text: str, name: str = "t.csv", encoding: str = "utf-8") -> Path:
    """A CSV exactly as given (tests of formats and errors depend on the bytes)."""
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def reference_frame() -> pd.DataFrame:
    """The shipped CSV read with plain pandas: the independent side of every figure check."""
    frame = pd.read_csv(CSV)
    frame["Date"] = pd.to_datetime(frame["Date"])
    return frame


def money(value: float, symbol: str = "$") -> str:
    """How answers write an amount (independently of the library's own formatter)."""
    return f"{'-' if value < 0 else ''}{symbol}{abs(value):,.2f}"
