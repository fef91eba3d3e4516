"""Every question type against the shipped CSV, each figure recomputed here with plain pandas."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from labs.rag.transactions import TransactionAnswer, TransactionsTable, answer_question
from tests.rag.helpers import CSV, money, reference_frame, write

REF = reference_frame()
EXPENSES = REF[REF["Type"] == "Expense"]
INCOME = REF[REF["Type"] == "Income"]


@pytest.fixture(scope="module")
def table() -> TransactionsTable:
    return TransactionsTable.load(CSV)


def ask(table: TransactionsTable, question: str, kind: str | None = None) -> TransactionAnswer:
    answer = answer_question(table, question)
    assert answer is not None, f"not routed to the transactions: {question!r}"
    assert answer.source == "transactions"
    json.dumps(answer.data)  # callers send it as JSON
    if kind:
        assert answer.kind == kind, (question, answer.kind, answer.answer)
    return answer


def spent(rows: pd.DataFrame) -> float:
    return round(-rows.loc[rows["Type"] == "Expense", "Amount"].sum(), 2)


def received(rows: pd.DataFrame) -> float:
    return round(rows.loc[rows["Type"] == "Income", "Amount"].sum(), 2)


def between(start: str, end: str) -> pd.DataFrame:
    return REF[(REF["Date"] >= start) & (REF["Date"] <= end)]


def test_total_expenses_income_and_net(table: TransactionsTable) -> None:
    total = spent(REF)
    answer = ask(table, "Total expenses?", "total")
    assert money(total) in answer.answer and answer.data["figures"]["expenses"] == pytest.approx(total)
    assert answer.data["row_count"] == len(EXPENSES)
    income = received(REF)
    answer = ask(table, "What was my total income?", "total")
    assert money(income) in answer.answer and answer.data["figures"]["income"] == pytest.approx(income)
    answer = ask(table, "What's my net profit?", "total")
    assert money(round(income - total, 2)) in answer.answer
    assert answer.data["figures"]["net"] == pytest.approx(income - total)


@pytest.mark.parametrize(
    ("question", "rows", "pick"),
    [
        ("What was my largest expense?", EXPENSES, lambda r: r["Amount"].idxmin()),
        ("What was my smallest expense?", EXPENSES, lambda r: r["Amount"].idxmax()),
        ("What was my biggest income?", INCOME, lambda r: r["Amount"].idxmax()),
        ("What was the smallest payment I received?", INCOME, lambda r: r["Amount"].idxmin()),
    ],
)
def test_largest_and_smallest(table: TransactionsTable, question: str, rows: pd.DataFrame, pick) -> None:
    row = rows.loc[pick(rows)]
    answer = ask(table, question, "extreme")
    assert money(abs(row["Amount"])) in answer.answer
    assert row["Description"] in answer.answer
    assert row["Date"].date().isoformat() in answer.answer
    assert answer.data["rows"] == [{"date": row["Date"].date().isoformat(), "description": row["Description"], "amount": row["Amount"], "type": row["Type"], "category": row["Category"]}]


def test_largest_expense_is_the_documented_one_when_filtered(table: TransactionsTable) -> None:
    answer = ask(table, "What was my largest expense in December?", "extreme")
    assert answer.answer.startswith("Your largest expense in December 2024 was $1,295.83 for Newegg - Neptune HX100G power supply on 2024-12-06")


@pytest.mark.parametrize("category", sorted(REF["Category"].unique()))
def test_every_category_in_the_data(table: TransactionsTable, category: str) -> None:
    rows = REF[REF["Category"] == category]
    if (rows["Type"] == "Income").all():
        answer = ask(table, f"How much did I receive from {category}?", "total")
        assert money(received(rows)) in answer.answer, answer.answer
    else:
        answer = ask(table, f"How much did I spend on {category.lower()}?", "total")
        assert money(spent(rows)) in answer.answer, answer.answer
        assert answer.data["filters"]["categories"] == [category]


@pytest.mark.parametrize("merchant", ["Microsoft", "Adobe", "Shell", "Staples", "Delta", "Starbucks", "Geico"])
def test_spending_at_a_merchant(table: TransactionsTable, merchant: str) -> None:
    rows = REF[REF["Description"].str.contains(merchant, case=False)]
    answer = ask(table, f"How much did I spend on {merchant}?", "total")
    assert f"You spent {money(spent(rows))} at {merchant}" in answer.answer
    assert answer.data["row_count"] == int((rows["Type"] == "Expense").sum())
    if (rows["Type"] == "Income").any():  # refunds from the same merchant are reported, not netted
        assert money(received(rows)) in answer.answer


def test_description_word_and_synonym(table: TransactionsTable) -> None:
    hotel = REF[REF["Description"].str.contains("Hotel|Hyatt", case=False) & REF["Description"].str.contains("hotel", case=False)]
    answer = ask(table, "How much was spent on hotels?", "total")
    assert money(spent(hotel)) in answer.answer
    answer = ask(table, "How much did I spend on gas?", "total")
    assert money(spent(REF[REF["Category"] == "Fuel"])) in answer.answer


@pytest.mark.parametrize(
    ("question", "start", "end"),
    [
        ("How much did I spend in March 2024?", "2024-03-01", "2024-03-31"),
        ("How much did I spend in Q3?", "2024-07-01", "2024-09-30"),
        ("What did I spend in 2024?", "2024-01-01", "2024-12-31"),
        ("How much did I spend between 2024-01-01 and 2024-03-31?", "2024-01-01", "2024-03-31"),
        ("How much did I spend from Feb 10, 2024 to 03/05/2024?", "2024-02-10", "2024-03-05"),
        ("How much did I spend last month?", "2024-11-01", "2024-11-30"),
        ("How much did I spend in the last 3 months?", "2024-10-01", "2024-12-31"),
        ("Spending since 2024-11-15", "2024-11-15", "2024-12-31"),
        ("How much did I spend in the first half?", "2024-01-01", "2024-06-30"),
        ("How much did I spend in the spring?", "2024-03-01", "2024-05-31"),
    ],
)
def test_periods(table: TransactionsTable, question: str, start: str, end: str) -> None:
    answer = ask(table, question, "total")
    assert money(spent(between(start, end))) in answer.answer, answer.answer
    assert answer.data["filters"]["periods"][0]["start"] == start and answer.data["filters"]["periods"][0]["end"] == end


def test_last_month_is_relative_to_the_data(table: TransactionsTable) -> None:
    assert REF["Date"].max().date().isoformat() == "2024-12-31"
    answer = ask(table, "Fuel costs last month", "total")
    fuel = between("2024-11-01", "2024-11-30")
    assert money(spent(fuel[fuel["Category"] == "Fuel"])) in answer.answer
    assert "November 2024" in answer.answer and "2024-12-31" in answer.answer


def test_category_and_period_together(table: TransactionsTable) -> None:
    rows = between("2024-03-01", "2024-03-31")
    answer = ask(table, "How much did we spend on fuel in March?", "total")
    assert answer.answer.startswith(f"You spent {money(spent(rows[rows['Category'] == 'Fuel']))} on Fuel in March 2024")


def test_top_n_expenses(table: TransactionsTable) -> None:
    expected = EXPENSES.sort_values("Amount", kind="mergesort").head(5)
    answer = ask(table, "What were my top 5 expenses?", "top")
    assert answer.data["figures"]["amounts"] == [abs(a) for a in expected["Amount"]]
    assert [r["description"] for r in answer.data["rows"]] == list(expected["Description"])
    for amount in expected["Amount"]:
        assert money(abs(amount)) in answer.answer
    assert "| # | Date | Description |" in answer.answer


def test_average_monthly_spending(table: TransactionsTable) -> None:
    months = REF["Date"].dt.to_period("M").nunique()
    answer = ask(table, "What is my average monthly spending?", "average_monthly")
    assert months == 12
    assert money(round(spent(REF) / months, 2)) in answer.answer
    assert answer.data["figures"]["months"] == 12


def test_counts(table: TransactionsTable) -> None:
    answer = ask(table, "How many transactions do I have?", "count")
    assert f"You have {len(REF)} transactions" in answer.answer
    rows = between("2024-10-01", "2024-12-31")
    answer = ask(table, "How many times did I buy fuel in Q4?", "count")
    assert answer.data["figures"]["count"] == int(((rows["Category"] == "Fuel") & (rows["Type"] == "Expense")).sum())


def test_summary_by_category_and_month(table: TransactionsTable) -> None:
    answer = ask(table, "Give me a financial summary", "summary")
    assert answer.answer.startswith("**Financial summary**")
    by_category = answer.data["figures"]["by_category"]
    for category, rows in REF.groupby("Category"):
        assert by_category[category]["expenses"] == pytest.approx(spent(rows))
        assert by_category[category]["income"] == pytest.approx(received(rows))
        assert f"| {category} | {money(spent(rows))} | {money(received(rows))} | {len(rows)} |" in answer.answer
    by_month = answer.data["figures"]["by_month"]
    for month, rows in REF.groupby(REF["Date"].dt.strftime("%Y-%m")):
        assert by_month[month]["expenses"] == pytest.approx(spent(rows))
        assert by_month[month]["net"] == pytest.approx(received(rows) - spent(rows))
    only_months = ask(table, "Expenses by month", "summary")
    assert "by_category" not in only_months.data["figures"] and "by_month" in only_months.data["figures"]


def test_ranking_categories(table: TransactionsTable) -> None:
    totals = EXPENSES.groupby("Category")["Amount"].sum().sort_values()
    answer = ask(table, "Which category did I spend the most on?", "ranking")
    assert f"was {totals.index[0]}: {money(-totals.iloc[0])}" in answer.answer


def test_comparisons(table: TransactionsTable) -> None:
    fuel = REF[REF["Category"] == "Fuel"]
    march = spent(fuel[fuel["Date"].dt.month == 3])
    april = spent(fuel[fuel["Date"].dt.month == 4])
    answer = ask(table, "Did I spend more on fuel in March or April?", "compare")
    more, less = ("March", "April") if march > april else ("April", "March")
    assert f"You spent more on Fuel in {more} 2024" in answer.answer
    assert money(march) in answer.answer and money(april) in answer.answer
    assert money(round(abs(march - april), 2)) in answer.answer
    answer = ask(table, "Compare my income in Q1 vs Q2", "compare")
    q1, q2 = received(between("2024-01-01", "2024-03-31")), received(between("2024-04-01", "2024-06-30"))
    assert money(q1) in answer.answer and money(q2) in answer.answer


def test_union_of_merchants(table: TransactionsTable) -> None:
    rows = REF[REF["Description"].str.contains("Uber|Lyft")]
    answer = ask(table, "How much did Uber and Lyft cost me?", "total")
    assert money(spent(rows)) in answer.answer


def test_unanswerable_says_so(table: TransactionsTable) -> None:
    for question in ("Why did my spending spike in July?", "What's my balance?"):
        answer = ask(table, question, "unsupported")
        assert answer.answer.startswith("I can't answer that from your transactions: ")
        assert "I can answer:" in answer.answer


def test_absent_merchant_or_category_names_closest(table: TransactionsTable) -> None:
    answer = ask(table, "How much did I spend at Chipotel?", "no_match")
    assert 'no transactions matching "chipotel"' in answer.answer and "Chipotle" in answer.data["closest"]
    answer = ask(table, "How much did I spend on Netflix?", "no_match")
    assert answer.data["figures"]["count"] == 0 and "Categories in your data: Advertising" in answer.answer
    answer = ask(table, "How much tax did I pay?", "no_match")
    assert '"tax"' in answer.answer


def test_general_questions_are_left_to_the_model(table: TransactionsTable) -> None:
    for question in ("What is the largest ocean?", "How do I pay attention in class?", "Explain income tax brackets"):
        assert answer_question(table, question) is None


def test_currency_symbol_is_configurable(tmp_path: Path) -> None:
    table = TransactionsTable.load(write(tmp_path, "Date,Description,Amount\n2024-01-01,Shell,-1234.5\n2024-01-02,Acme,10\n"), currency_symbol="€")
    answer = ask(table, "What were my total expenses?")
    assert "€1,234.50" in answer.answer


def test_list_and_latest(table: TransactionsTable) -> None:
    staples = REF[REF["Description"].str.contains("Staples") & (REF["Type"] == "Expense")]
    answer = ask(table, "List all Staples purchases", "list")
    assert answer.data["row_count"] == len(staples)
    assert [r["date"] for r in answer.data["rows"]] == [d.date().isoformat() for d in staples["Date"]]
    zoom = REF[REF["Description"].str.contains("Zoom")]
    answer = ask(table, "When did I last pay for Zoom?", "latest")
    assert answer.data["figures"]["date"] == zoom["Date"].max().date().isoformat()


def test_ranking_payers(table: TransactionsTable) -> None:
    clients = INCOME[INCOME["Category"] == "Client Income"]
    by_payer = clients.groupby(clients["Description"].str.extract(r"Payment from (.+?) - ")[0])["Amount"].sum().sort_values(ascending=False)
    answer = ask(table, "Which client paid me the most?", "ranking")
    assert f"was {by_payer.index[0]}: {money(by_payer.iloc[0])}" in answer.answer


def test_words_outside_the_data_are_not_answered_by_a_synonym(table: TransactionsTable) -> None:
    assert ask(table, "How much did I spend on dog food?").kind == "no_match"
    microsoft = REF[REF["Description"].str.contains("Microsoft")]
    assert money(spent(microsoft)) in ask(table, "How much did I spend on Microsoft Office?", "total").answer
