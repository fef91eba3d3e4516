"""The router on the labelled questions (>= 95%), the held-out list (reported), and its basis."""

from __future__ import annotations

from pathlib import Path

import pytest

from labs.rag.transactions import TransactionsTable, explain_route, route
from tests.rag.helpers import CSV, write
from tests.rag.routing_questions import HELD_OUT, LABELLED


@pytest.fixture(scope="module")
def table() -> TransactionsTable:
    return TransactionsTable.load(CSV)


def _accuracy(table: TransactionsTable, questions: list[tuple[str, bool]], name: str) -> float:
    misses = []
    for question, expected in questions:
        decision = explain_route(table, question)
        if decision.is_transaction != expected:
            misses.append(f"  expected {'transactions' if expected else 'model'}: {question!r} (score {decision.score:.1f}, {decision.signals})")
    accuracy = 1 - len(misses) / len(questions)
    print(f"\n{name}: {len(questions) - len(misses)}/{len(questions)} = {accuracy:.1%}" + ("".join("\n" + miss for miss in misses) if misses else ""))
    return accuracy


def test_labelled_set_is_big_and_balanced() -> None:
    assert len(LABELLED) >= 80
    about_data = sum(label for _, label in LABELLED)
    assert abs(about_data - (len(LABELLED) - about_data)) <= 6
    assert len({q for q, _ in LABELLED}) == len(LABELLED)
    assert len(HELD_OUT) == 20 and not {q for q, _ in HELD_OUT} & {q for q, _ in LABELLED}


def test_routing_accuracy_on_labelled_set(table: TransactionsTable) -> None:
    assert _accuracy(table, LABELLED, "labelled") >= 0.95


def test_routing_accuracy_on_held_out_set_is_reported(table: TransactionsTable) -> None:
    """Reported, not asserted: asserting it would make it one more set to tune on."""
    _accuracy(table, HELD_OUT, "held-out")


@pytest.mark.parametrize(
    "question",
    ["What is the total number of planets?", "How do I pay attention in class?", "What is the largest ocean?", "How much does a Tesla cost?", "Explain income tax brackets"],
)
def test_the_spec_traps_go_to_the_model(table: TransactionsTable, question: str) -> None:
    assert route(table, question) is False


def test_merchants_count_only_when_the_table_has_them(tmp_path: Path) -> None:
    """'Zorblax' is evidence in a table that has it, and nothing in one that does not."""
    question = "Zorblax charges last quarter"
    with_it = TransactionsTable.load(write(tmp_path, "Date,Description,Amount\n2024-01-01,Zorblax Cloud,-10\n2024-01-02,Acme,10\n", "a.csv"))
    without = TransactionsTable.load(write(tmp_path, "Date,Description,Amount\n2024-01-01,Shell,-10\n2024-01-02,Acme,10\n", "b.csv"))
    assert explain_route(with_it, question).score > explain_route(without, question).score
    assert route(with_it, question)


def test_deterministic(table: TransactionsTable) -> None:
    assert [route(table, q) for q, _ in LABELLED] == [route(table, q) for q, _ in LABELLED]
