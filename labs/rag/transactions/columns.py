"""Which header is the date, description, amount...: bank exports name them all differently.

Headers are compared case-insensitively after dropping parenthesised units ("Amount (USD)")
and punctuation; each role has synonyms in priority order, so "Transaction Date" beats
"Posted Date" when a file has both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SYNONYMS: dict[str, tuple[str, ...]] = {
    "date": (
        "date", "transaction date", "trans date", "txn date", "booking date", "posting date",
        "posted date", "post date", "date posted", "value date", "posted", "day",
    ),
    "description": (
        "description", "transaction description", "memo", "details", "transaction details",
        "payee", "merchant", "merchant name", "name", "narrative", "particulars", "reference",
        "transaction", "vendor", "counterparty", "text",
    ),
    "amount": ("amount", "transaction amount", "amt", "value", "net amount", "sum"),
    "debit": ("debit", "debits", "debit amount", "withdrawal", "withdrawals", "money out", "paid out", "outflow", "out"),
    "credit": ("credit", "credits", "credit amount", "deposit", "deposits", "money in", "paid in", "inflow", "in"),
    "type": ("type", "transaction type", "txn type", "kind", "direction", "debit/credit", "dr/cr"),
    "category": ("category", "categories", "transaction category", "spending category", "budget category", "class"),
}

# "What the file needs", for the error when a role is missing.
EXPECTED = {
    "date": "Date (or Transaction Date, Posting Date, ...)",
    "description": "Description (or Memo, Details, Payee, ...)",
    "amount": "Amount (or separate Debit and Credit columns)",
}


def normalise_header(header: str) -> str:
    """'  Amount (USD) ' -> 'amount'; 'Transaction_Date' -> 'transaction date'."""
    text = header.replace("\ufeff", "").strip().lower()
    if text in ("debit/credit", "dr/cr"):
        return text
    text = re.sub(r"\(.*?\)|\[.*?\]", " ", text)
    text = re.sub(r"[_\-./:#]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class ColumnMap:
    """Index of each role's column in the header (None where the file has none)."""

    date: int | None
    description: int | None
    amount: int | None
    debit: int | None
    credit: int | None
    type: int | None
    category: int | None

    def missing(self) -> list[str]:
        """Roles a usable file must have, that this header lacks."""
        gaps = [role for role in ("date", "description") if getattr(self, role) is None]
        if self.amount is None and (self.debit is None or self.credit is None):
            gaps.append("amount")
        return gaps


def map_columns(headers: list[str]) -> ColumnMap:
    """Assign each role the first header matching its synonyms (each header used once)."""
    names = [normalise_header(header) for header in headers]
    taken: set[int] = set()
    found: dict[str, int | None] = {}
    for role in ("date", "amount", "debit", "credit", "type", "category", "description"):
        found[role] = None
        for synonym in SYNONYMS[role]:
            matches = [index for index, name in enumerate(names) if name == synonym and index not in taken]
            if matches:
                found[role] = matches[0]
                taken.add(matches[0])
                break
    if found["date"] is None:  # e.g. "Date of Transaction", "Settlement Date"
        loose = [index for index, name in enumerate(names) if "date" in name.split() and index not in taken]
        if len(loose) >= 1:
            found["date"] = loose[0]
            taken.add(loose[0])
    return ColumnMap(**found)
