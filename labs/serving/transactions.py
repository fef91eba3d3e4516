"""The configured transactions table, shared by labs-gen, the chat API and /v1/rag/transactions/query.

The table is loaded on first use and reloaded when the file changes (size or modification time),
so a team can drop in a new bank export without restarting the server. The default path is the
sample shipped with labs: when it is absent, transaction answers are simply off (logged once).
A path the user set must exist: its absence is an error, not a silent fallback.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from labs.config import Settings
from labs.errors import ConfigError
from labs.serving.turn import Turn

if TYPE_CHECKING:  # pandas (0.2 s) is imported when a transactions file is there to read, not before
    from labs.rag.transactions import TransactionAnswer, TransactionsTable

logger = logging.getLogger(__name__)


class TransactionsService:
    def __init__(self, settings: Settings) -> None:
        rag = settings.rag
        self.enabled: bool = rag.enabled
        self.path: Path | None = rag.transactions_csv
        self.explicit = settings.sources["rag.transactions_csv"] != "default"
        self.source = settings.sources["rag.transactions_csv"]
        self.currency_symbol: str = rag.currency_symbol
        self._table: TransactionsTable | None = None
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._reported_absent = False

    def table(self) -> TransactionsTable | None:
        """The current table, or None when no transactions file is configured or present."""
        if self.path is None:
            return None
        path = self.path.expanduser()
        try:
            stat = path.stat()
        except FileNotFoundError:
            if self.explicit:
                raise ConfigError(f"the transactions file {path} ({self.source}) does not exist: fix the path "
                                  "(LABS_TRANSACTIONS_CSV or [rag] transactions_csv)") from None
            if not self._reported_absent:
                logger.info("no transactions file at %s: transaction answers are off", path.resolve())
                self._reported_absent = True
            return None
        stamp = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if self._table is None or stamp != self._stamp:
                from labs.rag.transactions import TransactionsTable

                self._table = TransactionsTable.load(path, currency_symbol=self.currency_symbol)
                self._stamp = stamp
                logger.info("loaded transactions from %s", path)
            return self._table

    def answer(self, question: str, enabled: bool | None = None) -> TransactionAnswer | None:
        """The exact answer when retrieval is on and the question is about the transactions, else None."""
        if not (self.enabled if enabled is None else enabled):
            return None
        table = self.table()
        if table is None:
            return None
        from labs.rag.transactions import answer_question

        return answer_question(table, question)

    def answer_turn(self, turn: Turn) -> TransactionAnswer | None:
        """The turn's exact answer from the data, or None when the model (or the documents) should answer:
        no plain question, a schema or tools asked for, or the documents on and nothing in the data."""
        question = turn.question
        if question is None or turn.guided is not None or turn.tools:
            return None
        answer = self.answer(question, turn.use_data)
        if answer is None or (turn.use_docs and answer.kind in ("no_match", "unsupported")):
            return None  # nothing in the data: the documents may have it
        return answer

    def query(self, question: str) -> TransactionAnswer:
        """Answer a question sent to the transactions endpoint (no routing: the caller chose the data)."""
        table = self.table()
        if table is None:
            raise ConfigError("no transactions file is configured: set LABS_TRANSACTIONS_CSV to your CSV")
        from labs.rag.transactions import answer_question

        result = answer_question(table, question, routed=True)
        assert result is not None
        return result
