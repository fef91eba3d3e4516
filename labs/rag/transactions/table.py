"""Load a transactions CSV into one normalised pandas frame, or fail naming what to fix.

The frame always has the same columns whatever the export looked like:
`date` (datetime64), `description`, `cents` (int64, signed: expenses negative), `amount`
(float, cents / 100), `type` ("Expense"/"Income"), `category` ("" when the file has none) and
`line` (the row's line in the file, for tracing an answer back). Every row is parsed or the
load fails: an answer from a partly read file would be silently wrong.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from labs.rag.transactions.columns import EXPECTED, ColumnMap, map_columns
from labs.rag.transactions.errors import TransactionsFileError
from labs.rag.transactions.values import ValueProblem, choose_date_format, parse_amount_cents, parse_date, readable_format

if TYPE_CHECKING:
    from labs.rag.transactions.vocab import Vocabulary

logger = logging.getLogger(__name__)

EXPENSE, INCOME = "Expense", "Income"
TYPE_WORDS = {
    EXPENSE: {"expense", "expenses", "debit", "dr", "withdrawal", "payment", "purchase", "spend", "out", "outflow", "charge"},
    INCOME: {"income", "credit", "cr", "deposit", "refund", "in", "inflow", "revenue", "earning", "earnings"},
}
UNCATEGORISED = "Uncategorized"
HEADER_SEARCH_ROWS = 20  # bank exports often put account details above the header


@dataclass(frozen=True)
class _RawFile:
    headers: list[str]
    header_line: int
    rows: list[tuple[int, list[str]]]  # (line in file, cells)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TransactionsFileError(f"transactions file {path} does not exist: set rag.transactions_csv / LABS_TRANSACTIONS_CSV to a CSV file") from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise TransactionsFileError(f"transactions file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        logger.info("%s is not UTF-8; reading it as Windows-1252", path)
        return raw.decode("cp1252", errors="replace")


def _delimiter(text: str) -> str:
    """The separator used most in the first non-empty line (headers rarely contain any)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    counts = {sep: first.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _read_rows(path: Path) -> _RawFile:
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    records: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                records.append((reader.line_num, cells))
    except csv.Error as exc:
        raise TransactionsFileError(f"transactions file {path}, line {reader.line_num}: not valid CSV ({exc})") from None
    if not records:
        raise TransactionsFileError(f"transactions file {path} is empty: expected a header row with {', '.join(EXPECTED.values())}")
    header_at = 0
    for index, (_, cells) in enumerate(records[:HEADER_SEARCH_ROWS]):
        if not map_columns(cells).missing():
            header_at = index
            break
    line, headers = records[header_at]
    return _RawFile(headers=[cell.strip() for cell in headers], header_line=line, rows=records[header_at + 1 :])


def _cell(cells: list[str], index: int | None) -> str:
    return cells[index].strip() if index is not None and index < len(cells) else ""


def _type_of(word: str) -> str | None:
    lowered = word.strip().lower()
    return next((kind for kind, words in TYPE_WORDS.items() if lowered in words), None)


class _Parser:
    """Turns raw rows into columns, raising on the first bad row with its line and value."""

    def __init__(self, path: Path, raw: _RawFile, columns: ColumnMap) -> None:
        self.path, self.raw, self.columns = path, raw, columns
        self.headers = raw.headers

    def fail(self, line: int, message: str) -> TransactionsFileError:
        return TransactionsFileError(f"transactions file {self.path}, line {line}: {message}")

    def name(self, index: int | None) -> str:
        return self.headers[index] if index is not None else "?"

    def check_widths(self) -> None:
        width = len(self.headers)
        for line, cells in self.raw.rows:
            extra = [cell for cell in cells[width:] if cell.strip()]
            if extra:
                raise self.fail(line, f"{len(cells)} values but the header (line {self.raw.header_line}) has {width} columns")

    def dates(self) -> list[date]:
        index = self.columns.date
        values = [_cell(cells, index) for _, cells in self.raw.rows]
        for (line, _), value in zip(self.raw.rows, values):
            if not value:
                raise self.fail(line, f"{self.name(index)} is empty")
        fmt, bad = choose_date_format(values)
        if bad is not None:
            line = self.raw.rows[bad][0]
            raise self.fail(line, f"{self.name(index)} {values[bad]!r} is not a date (other rows look like {readable_format(fmt)})")
        if fmt in ("%m/%d/%Y", "%m/%d/%y", "%m-%d-%Y"):
            logger.info("%s: dates read as month/day/year (%s)", self.path, readable_format(fmt))
        return [parse_date(value, fmt) for value in values]

    def amount(self, line: int, cells: list[str], index: int | None) -> int | None:
        try:
            return parse_amount_cents(_cell(cells, index))
        except ValueProblem as exc:
            raise self.fail(line, f"{self.name(index)} {exc}") from None

    def signed_cents(self) -> list[int]:
        columns, result = self.columns, []
        for line, cells in self.raw.rows:
            if columns.amount is not None:
                cents = self.amount(line, cells, columns.amount)
                if cents is None:
                    raise self.fail(line, f"{self.name(columns.amount)} is empty")
            else:
                debit = self.amount(line, cells, columns.debit)
                credit = self.amount(line, cells, columns.credit)
                if debit and credit:
                    raise self.fail(line, f"both {self.name(columns.debit)} ({_cell(cells, columns.debit)}) and {self.name(columns.credit)} ({_cell(cells, columns.credit)}) are set")
                if debit is None and credit is None:
                    raise self.fail(line, f"neither {self.name(columns.debit)} nor {self.name(columns.credit)} has an amount")
                cents = -abs(debit) if debit else abs(credit or 0)
            result.append(cents)
        return result

    def types(self, cents: list[int]) -> list[str]:
        """From the Type column when there is one (signing unsigned exports), else from the sign."""
        index = self.columns.type
        derived = [EXPENSE if value < 0 else INCOME if value > 0 else EXPENSE for value in cents]
        if index is None:
            return derived
        stated: list[str] = []
        for line, cells in self.raw.rows:
            word = _cell(cells, index)
            kind = _type_of(word)
            if kind is None:
                raise self.fail(line, f"{self.name(index)} {word!r} is neither an expense nor income (expected Expense/Income or Debit/Credit)")
            stated.append(kind)
        if all(value >= 0 for value in cents):  # unsigned export: the Type column carries the sign
            for position, kind in enumerate(stated):
                if kind == EXPENSE:
                    cents[position] = -cents[position]
            return stated
        for (line, _), kind, value in zip(self.raw.rows, stated, cents):
            if value and kind != (EXPENSE if value < 0 else INCOME):
                raise self.fail(line, f"{self.name(index)} says {kind} but the amount {value / 100:.2f} has the other sign")
        return stated


@dataclass(eq=False)
class TransactionsTable:
    """A loaded, normalised transactions table and how to word its amounts."""

    frame: pd.DataFrame
    path: Path | None = None
    currency_symbol: str = "$"
    has_category: bool = True
    source_columns: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, currency_symbol: str = "$") -> TransactionsTable:
        """Read and check the whole file; raises TransactionsFileError naming the column or row."""
        path = Path(path).expanduser()
        raw = _read_rows(path)
        columns = map_columns(raw.headers)
        missing = columns.missing()
        if missing:
            wanted = "; ".join(f"no {role} column: expected {EXPECTED[role]}" for role in missing)
            raise TransactionsFileError(f"transactions file {path}: {wanted}; its columns are {', '.join(raw.headers) or '(none)'}")
        if not raw.rows:
            raise TransactionsFileError(f"transactions file {path} has a header but no transactions")
        parser = _Parser(path, raw, columns)
        parser.check_widths()
        dates = parser.dates()
        cents = parser.signed_cents()
        if columns.type is None and columns.amount is not None and all(value >= 0 for value in cents) and len(cents) > 1:
            raise TransactionsFileError(
                f"transactions file {path}: all {len(cents)} amounts in {raw.headers[columns.amount]} are positive and there is no Type, "
                "Debit or Credit column, so expenses cannot be told from income: make expenses negative or add a Type column (Expense/Income)"
            )
        types = parser.types(cents)
        categories = [_cell(cells, columns.category) or UNCATEGORISED for _, cells in raw.rows] if columns.category is not None else [""] * len(cents)
        frame = pd.DataFrame(
            {
                "date": pd.to_datetime(pd.Series(dates, dtype="object")).astype("datetime64[ns]"),
                "description": [_cell(cells, columns.description) for _, cells in raw.rows],
                "cents": pd.Series(cents, dtype="int64"),
                "type": types,
                "category": categories,
                "line": pd.Series([line for line, _ in raw.rows], dtype="int64"),
            }
        )
        frame["amount"] = frame["cents"] / 100
        frame = frame.sort_values(["date", "line"], kind="mergesort").reset_index(drop=True)
        used = {role: raw.headers[index] for role, index in vars(columns).items() if index is not None}
        logger.info("loaded %d transactions from %s (%s to %s; columns %s)", len(frame), path, frame["date"].min().date(), frame["date"].max().date(), used)
        return cls(frame=frame, path=path, currency_symbol=currency_symbol, has_category=columns.category is not None, source_columns=used)

    @property
    def first_date(self) -> date:
        return self.frame["date"].min().date()

    @property
    def last_date(self) -> date:
        """'Now' for relative dates ("last month"): the data's own latest day, not the clock."""
        return self.frame["date"].max().date()

    @cached_property
    def vocabulary(self) -> Vocabulary:
        """Categories, merchants and description words of this table (built once, on first use)."""
        from labs.rag.transactions.vocab import Vocabulary

        return Vocabulary.from_frame(self.frame, self.has_category)
