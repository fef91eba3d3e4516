"""Bank-export variants load to the same normalised rows; unusable files name what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from labs.errors import LabsError
from labs.rag.transactions import TransactionsFileError, TransactionsTable, answer_question
from labs.rag.transactions.values import parse_amount_cents
from tests.rag.helpers import write

EXPECTED = [("2024-03-15", "Shell", -129583, "Expense"), ("2024-03-16", "Acme payment", 200000, "Income"), ("2024-04-01", "Staples", -4550, "Expense")]


def _rows(table: TransactionsTable) -> list[tuple[str, str, int, str]]:
    frame = table.frame
    return [(d.date().isoformat(), desc, int(c), t) for d, desc, c, t in zip(frame["date"], frame["description"], frame["cents"], frame["type"])]


@pytest.mark.parametrize(
    "text",
    [
        "Date,Description,Amount,Type,Category\n2024-03-15,Shell,-1295.83,Expense,Fuel\n2024-03-16,Acme payment,2000.00,Income,Client\n2024-04-01,Staples,-45.50,Expense,Office\n",
        "Date,Description,Amount\n03/15/2024,Shell,\"-$1,295.83\"\n03/16/2024,Acme payment,\"$2,000.00\"\n04/01/2024,Staples,($45.50)\n",
        "Transaction Date;Memo;Amount (EUR)\n15.03.2024;Shell;-€1.295,83\n16.03.2024;Acme payment;€2.000,00\n01.04.2024;Staples;-€45,50\n",
        "Transaction Date,Details,Amount\n\"Mar 15, 2024\",Shell,\"-1,295.83\"\n\"Mar 16, 2024\",Acme payment,\"2,000.00\"\n\"Apr 1, 2024\",Staples,(45.50)\n",
        "Posting Date,Payee,Debit,Credit\n2024-03-15,Shell,\"1,295.83\",\n2024-03-16,Acme payment,,\"2,000.00\"\n2024-04-01,Staples,45.50,\n",
        "DATE,DESCRIPTION,WITHDRAWALS,DEPOSITS\n2024/03/15,Shell,$1295.83,0.00\n2024/03/16,Acme payment,0.00,$2000.00\n2024/04/01,Staples,$45.50,0.00\n",
        "date\tdescription\tamount\ttype\n2024-03-15\tShell\t1295.83\tDebit\n2024-03-16\tAcme payment\t2000.00\tCredit\n2024-04-01\tStaples\t45.50\tDebit\n",
        "Bank of Example - account 1234\nExported 2024-05-01\n\nDate,Description,Amount\n2024-03-15,Shell,1295.83 DR\n2024-03-16,Acme payment,2000.00 CR\n2024-04-01,Staples,45.50-\n",
        "\ufeffDate,Narrative,Amount\n2024-03-15 09:30:00,Shell,-1295.83\n2024-03-16 10:00:00,Acme payment,+2000\n2024-04-01 12:00:00,Staples,-45.5\n",
    ],
    ids=["standard", "us-dates-currency-parentheses", "european-semicolon", "named-months", "debit-credit", "withdrawals-deposits", "unsigned-with-type", "preamble-dr-cr", "bom-times"],
)
def test_variants_load_to_the_same_rows(tmp_path: Path, text: str) -> None:
    table = TransactionsTable.load(write(tmp_path, text))
    assert _rows(table) == EXPECTED
    answer = answer_question(table, "What were my total expenses?")
    assert answer is not None and "$1,341.33" in answer.answer


def test_day_first_dates_when_month_first_cannot_parse(tmp_path: Path) -> None:
    table = TransactionsTable.load(write(tmp_path, "Date,Description,Amount\n15/03/2024,Shell,-1\n01/04/2024,Staples,-2\n"))
    assert [d.date().isoformat() for d in table.frame["date"]] == ["2024-03-15", "2024-04-01"]


def test_no_type_column_derives_type_from_sign(tmp_path: Path) -> None:
    table = TransactionsTable.load(write(tmp_path, "Date,Description,Amount\n2024-01-01,Shell,-10\n2024-01-02,Acme,25\n"))
    assert list(table.frame["type"]) == ["Expense", "Income"]
    assert not table.has_category


def test_no_category_column_matches_descriptions(tmp_path: Path) -> None:
    text = "Date,Description,Amount\n2024-01-01,Shell fuel stop,-40\n2024-01-02,Fuel depot,-60\n2024-01-03,Staples,-5\n2024-01-04,Acme,500\n"
    table = TransactionsTable.load(write(tmp_path, text))
    answer = answer_question(table, "How much did I spend on fuel?")
    assert answer is not None and answer.kind == "total"
    assert answer.data["figures"]["expenses"] == 100.0
    assert "$100.00" in answer.answer
    assert all(row["category"] is None for row in answer.data["rows"])


def test_amount_parsing() -> None:
    cases = {"$1,295.83": 129583, "-€12.50": -1250, "(45.00)": -4500, "12,50": 1250, "1.234,56": 123456, "45.00 DR": -4500, "45.00 CR": 4500, "USD 1,000": 100000, "45-": -4500, "£3": 300, "": None}
    for text, cents in cases.items():
        assert parse_amount_cents(text) == cents, text


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(TransactionsFileError) as caught:
        TransactionsTable.load(write(tmp_path, text))
    assert isinstance(caught.value, LabsError) and caught.value.exit_code == 2
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Day of week,Description,Amount\nMon,Shell,-1\n", ["no date column", "Day of week, Description, Amount"]),
        ("Date,Amount\n2024-01-01,-1\n", ["no description column", "Memo"]),
        ("Date,Description\n2024-01-01,Shell\n", ["no amount column", "Debit and Credit"]),
        ("Date,Description,Debit\n2024-01-01,Shell,1\n", ["no amount column"]),
        ("Date,Description,Amount\n2024-01-01,Shell,-1\n2024-13-45,Shell,-2\n", ["line 3", "'2024-13-45'", "Date", "YYYY-MM-DD"]),
        ("Date,Description,Amount\n2024-01-01,Shell,-1\n,Shell,-2\n", ["line 3", "Date is empty"]),
        ("Date,Description,Amount\n2024-01-01,Shell,-1\n\n2024-01-02,Shell,twelve\n", ["line 4", "Amount", "'twelve'"]),
        ("Date,Description,Amount\n2024-01-01,Shell,\n", ["line 2", "Amount is empty"]),
        ("Date,Description,Debit,Credit\n2024-01-01,Shell,5,6\n", ["line 2", "both Debit (5) and Credit (6)"]),
        ("Date,Description,Debit,Credit\n2024-01-01,Shell,,\n", ["line 2", "neither Debit nor Credit"]),
        ("Date,Description,Amount,Type\n2024-01-01,Shell,-1,Expense\n2024-01-02,Shell,-1,Transfer\n", ["line 3", "Type", "'Transfer'"]),
        ("Date,Description,Amount,Type\n2024-01-01,Shell,-1,Expense\n2024-01-02,Acme,5,Expense\n", ["line 3", "Type says Expense"]),
        ("Date,Description,Amount\n2024-01-01,Shell,-1,oops\n", ["line 2", "4 values", "3 columns"]),
        ("Date,Description,Amount\n2024-01-01,Shell,10\n2024-01-02,Acme,25\n", ["all 2 amounts in Amount are positive", "Type"]),
        ("Date,Description,Amount\n", ["no transactions"]),
        ("", ["is empty"]),
    ],
    ids=["no-date", "no-description", "no-amount", "debit-without-credit", "bad-date", "empty-date", "bad-amount", "empty-amount", "debit-and-credit", "neither", "bad-type", "type-sign", "too-wide", "all-positive", "header-only", "empty-file"],
)
def test_errors_name_the_column_or_row(tmp_path: Path, text: str, expected: list[str]) -> None:
    message = _error(tmp_path, text)
    for part in expected:
        assert part in message, message


def test_missing_file_and_folder(tmp_path: Path) -> None:
    for path, expected in ((tmp_path / "nope.csv", "does not exist"), (tmp_path, "cannot be read")):
        with pytest.raises(TransactionsFileError, match=expected):
            TransactionsTable.load(path)
