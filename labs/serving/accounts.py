"""Whom a turn is for: which models they may use, and where the tokens it uses are counted.

The serving core knows nothing of API keys or rate limits: a door (the HTTP API) passes an
`Account`; the core asks it about the model before anything is loaded or queued, and charges
it the tokens the engine processes as it processes them (prompt tokens with the first output,
generated tokens as they come), so an abandoned stream is charged what it used. The CLI passes none.
"""

from __future__ import annotations

from typing import Protocol

from labs.errors import LabsError


class Account(Protocol):
    name: str

    def allows(self, model_id: str) -> bool:
        """Whether this account may use the served model `model_id` (as GET /v1/models lists it)."""
        ...

    def charge(self, prompt_tokens: int, generated_tokens: int) -> None:
        """Count tokens processed for this account."""
        ...


class ModelNotAllowedError(LabsError):
    """The account may not use the model. Answered like an unknown model (404), as OpenAI does: a key
    is not told which models it cannot use, only which it can."""

    exit_code = 2

    def __init__(self, model_id: str, account: str) -> None:
        super().__init__(f"the model {model_id!r} does not exist or the API key '{account}' may not use it; "
                         "GET /v1/models lists the models this key may use")
        self.model_id = model_id


def check_model(account: Account | None, model_id: str) -> None:
    """Raise ModelNotAllowedError unless the account (None: anyone) may use the served model `model_id`."""
    if account is not None and not account.allows(model_id):
        raise ModelNotAllowedError(model_id, account.name)
