"""Parse the amounts and dates that bank exports actually contain.

Amounts become integer cents (Decimal, never float) so totals are exact; dates are parsed with
one format per column, chosen from the whole column, so 03/04/2024 cannot mean March in one
row and April in the next.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

_CURRENCY = re.compile(r"(?i)(?:us\$|c\$|a\$|[$€£¥₹]|\b(?:usd|eur|gbp|cad|aud|chf|jpy|inr)\b)")
_CREDIT_DEBIT_SUFFIX = re.compile(r"(?i)^(.*?)\s*\b(cr|dr)\.?$")
_THOUSANDS = {",": re.compile(r"^\d{1,3}(,\d{3})+$"), ".": re.compile(r"^\d{1,3}(\.\d{3})+$")}


class ValueProblem(ValueError):
    """A single cell could not be parsed; the loader adds the file row and column."""


def parse_amount_cents(text: str) -> int | None:
    """'$1,295.83', '-€12.50', '(45.00)', '12,50', '45.00 DR' -> signed cents; '' -> None."""
    value = text.strip().replace("\u00a0", " ")
    if not value:
        return None
    negative = False
    suffix = _CREDIT_DEBIT_SUFFIX.match(value)
    if suffix and suffix.group(1):
        value, negative = suffix.group(1), suffix.group(2).lower() == "dr"
    value = _CURRENCY.sub("", value).replace(" ", "").replace("'", "")
    if value.startswith("(") and value.endswith(")"):
        value, negative = value[1:-1], True
    if value.startswith("-"):
        value, negative = value[1:], not negative
    elif value.startswith("+"):
        value = value[1:]
    elif value.endswith("-"):
        value, negative = value[:-1], True
    value = _CURRENCY.sub("", value)
    number = _plain_number(value)
    if number is None:
        raise ValueProblem(f"{text.strip()!r} is not an amount")
    cents = int((number * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return -cents if negative else cents


def _plain_number(value: str) -> Decimal | None:
    """Digits with at most one decimal separator and optional thousands separators."""
    if not value or not re.fullmatch(r"[0-9.,]+", value) or not re.search(r"\d", value):
        return None
    if "," in value and "." in value:
        decimal_sep = "," if value.rfind(",") > value.rfind(".") else "."
        whole, _, fraction = value.rpartition(decimal_sep)
        thousands = "." if decimal_sep == "," else ","
        if not _THOUSANDS[thousands].match(whole) and not whole.isdigit():
            return None
        whole = whole.replace(thousands, "")
    elif "," in value:
        if _THOUSANDS[","].match(value):
            whole, fraction = value.replace(",", ""), ""
        else:
            whole, _, fraction = value.partition(",")
    elif value.count(".") > 1:
        if not _THOUSANDS["."].match(value):
            return None
        whole, fraction = value.replace(".", ""), ""
    else:
        whole, _, fraction = value.partition(".")
    if not (whole or fraction) or not (whole.isdigit() or whole == "") or not (fraction.isdigit() or fraction == ""):
        return None
    try:
        return Decimal(f"{whole or '0'}.{fraction or '0'}")
    except InvalidOperation:
        return None


# Tried in this order; month-first wins over day-first when a column fits both (US exports).
DATE_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%Y.%m.%d",
    "%m/%d/%Y",
    "%d/%m/%Y",
    "%m-%d-%Y",
    "%d-%m-%Y",
    "%d.%m.%Y",
    "%m/%d/%y",
    "%d/%m/%y",
    "%d.%m.%y",
    "%b %d, %Y",
    "%B %d, %Y",
    "%b %d %Y",
    "%B %d %Y",
    "%d %b %Y",
    "%d %B %Y",
    "%d %b, %Y",
    "%d-%b-%Y",
    "%d-%b-%y",
    "%Y%m%d",
)
_TIME_SUFFIX = re.compile(r"(?i)(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:am|pm)?\s*(?:z|[+-]\d{2}:?\d{2})?)$")


def _clean_date(text: str) -> str:
    return _TIME_SUFFIX.sub("", re.sub(r"\s+", " ", text.strip())).replace("Sept ", "Sep ")


def parse_date(text: str, fmt: str) -> date:
    """One cell with a known format (raises ValueError)."""
    value = _clean_date(text)
    if fmt == "%Y%m%d" and not re.fullmatch(r"\d{8}", value):
        raise ValueError(f"{text!r} is not YYYYMMDD")
    return datetime.strptime(value, fmt).date()


def readable_format(fmt: str) -> str:
    """'%m/%d/%Y' -> 'MM/DD/YYYY', for error messages."""
    for code, shown in (("%Y", "YYYY"), ("%y", "YY"), ("%m", "MM"), ("%d", "DD"), ("%b", "Mon"), ("%B", "Month")):
        fmt = fmt.replace(code, shown)
    return fmt


def _parses(value: str, fmt: str) -> bool:
    try:
        parse_date(value, fmt)
    except ValueError:
        return False
    return True


def choose_date_format(values: list[str]) -> tuple[str, int | None]:
    """The first format parsing every value; else the one parsing most, and the first index it fails on.

    Formats that cannot parse the first value are skipped (cheap); if none can, the first value
    is the bad one and is reported.
    """
    best: tuple[int, str, int] = (-1, DATE_FORMATS[0], 0)
    for fmt in DATE_FORMATS:
        if not values or not _parses(values[0], fmt):
            continue
        failures = [index for index, value in enumerate(values) if not _parses(value, fmt)]
        if not failures:
            return fmt, None
        if len(values) - len(failures) > best[0]:
            best = (len(values) - len(failures), fmt, failures[0])
    return best[1], best[2]
