"""The shipped CSV is exactly what the script produces, and looks like a small business's year."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.rag.helpers import CSV, SCRIPT


def test_shipped_csv_is_what_the_script_writes(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    for output in (first, second):
        subprocess.run([sys.executable, str(SCRIPT), "--output", str(output)], check=True, capture_output=True)
    assert first.read_bytes() == second.read_bytes(), "the script is not deterministic"
    assert first.read_bytes() == CSV.read_bytes(), "data/all_transactions.csv is stale: rerun scripts/make_transactions.py"


def test_schema_and_content() -> None:
    frame = pd.read_csv(CSV)
    assert list(frame.columns) == ["Date", "Description", "Amount", "Type", "Category"]
    assert len(frame) >= 600
    dates = pd.to_datetime(frame["Date"], format="%Y-%m-%d")
    assert (dates.dt.year == 2024).all()
    assert set(frame["Type"]) == {"Expense", "Income"}
    assert ((frame["Amount"] < 0) == (frame["Type"] == "Expense")).all()
    assert (frame["Amount"] != 0).all()
    categories = set(frame["Category"])
    for expected in ("Software", "Hardware", "Fuel", "Office Supplies", "Vehicle", "Travel", "Client Income", "Refunds"):
        assert expected in categories
    text = " ".join(frame["Description"])
    for merchant in ("Microsoft", "Adobe", "Shell", "Staples", "Delta"):
        assert merchant in text
    refunds = frame[frame["Category"] == "Refunds"]
    assert len(refunds) and (refunds["Amount"] > 0).all()
