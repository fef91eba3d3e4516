"""Exact answers from a transactions table, and routing questions to it (no model involved).

    table = TransactionsTable.load("data/all_transactions.csv", currency_symbol="$")
    answer = answer_question(table, "How much did I spend on fuel in March?")
    if answer is None:
        ...  # not about the transactions: send the question to the model
    else:
        answer.answer, answer.data, answer.kind, answer.source  # "transactions"

`route(table, question)` alone says whether a question is about the table; `explain_route`
also returns the evidence. A file that cannot be used raises `TransactionsFileError`.
"""

from labs.rag.transactions.answers import TransactionAnswer, answer_question
from labs.rag.transactions.errors import TransactionsFileError
from labs.rag.transactions.router import RouteDecision, explain_route, route
from labs.rag.transactions.table import TransactionsTable

__all__ = [
    "RouteDecision",
    "TransactionAnswer",
    "TransactionsFileError",
    "TransactionsTable",
    "answer_question",
    "explain_route",
    "route",
]
