"""The one error a transactions file can raise: it names the column or the row to fix."""

from __future__ import annotations

from labs.errors import LabsError


class TransactionsFileError(LabsError):
    """The transactions CSV is missing, unreadable, lacks a column or has a bad value.

    Raised instead of answering from part of the file: a silently skipped row would make every
    total wrong without anyone noticing.
    """

    exit_code = 2
