"""Time to first token and time per output token of one request, observed into the server's metrics."""

from __future__ import annotations

import time
from typing import Any


class Timing:
    def __init__(self, metrics: Any, model_id: str) -> None:
        self.metrics = metrics  # None: not observed (the CLI)
        self.model_id = model_id
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.tokens = 0

    def saw(self, out: Any) -> None:
        if out.new_token_ids:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
                if self.metrics is not None:
                    self.metrics.time_to_first_token.labels(self.model_id).observe(self.first_token_at - self.started)
            self.tokens += len(out.new_token_ids)

    def done(self) -> None:
        if self.metrics is not None and self.first_token_at is not None and self.tokens > 1:
            per_token = (time.perf_counter() - self.first_token_at) / (self.tokens - 1)
            self.metrics.time_per_output_token.labels(self.model_id).observe(per_token)
