"""Find the time periods a question names: months, quarters, years, date ranges, "last month".

Relative periods are relative to the data's latest transaction, not the clock: a file exported
in January still answers "last month" about its own last month. A month or quarter without a
year means its latest occurrence in the data.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd

MONTHS = {name.lower(): index for index, name in enumerate(calendar.month_name) if name}
MONTHS.update({name.lower(): index for index, name in enumerate(calendar.month_abbr) if name})
MONTHS["sept"] = 9
_AMBIGUOUS_MONTHS = {"may", "march", "mar"}  # also verbs: need a year, a day or a preposition
_MONTH_RE = r"(?:" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")"
_PREPOSITIONS = {"in", "during", "of", "since", "until", "till", "for", "from", "through", "to", "and", "or", "between", "vs", "versus", "than", "before", "after", "by", "last", "this", "early", "late", "mid"}
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
_ORDINAL_QUARTERS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4, "final": 4, "last": 4}

_ISO = r"\d{4}[-/]\d{1,2}[-/]\d{1,2}"
_US = r"\d{1,2}/\d{1,2}/\d{4}"
_DOTTED = r"\d{1,2}\.\d{1,2}\.\d{4}"
_NAMED = r"\b" + _MONTH_RE + r"\.?\s+\d{1,2}(?:st|nd|rd|th)?\b(?:,?\s+\d{4})?"
_NAMED_DAY_FIRST = r"\b\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?" + _MONTH_RE + r"\b\.?(?:,?\s+\d{4})?"
DATE_RE = r"(?:" + "|".join((_ISO, _US, _DOTTED, _NAMED, _NAMED_DAY_FIRST)) + r")"


@dataclass(frozen=True)
class Period:
    """An inclusive day range and how to say it ("in March 2024")."""

    start: date
    end: date
    phrase: str
    note: str = ""  # how a relative period was resolved, for the answer

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        return (frame["date"] >= pd.Timestamp(self.start)) & (frame["date"] <= pd.Timestamp(self.end))


def month_end(year: int, month: int) -> date:
    return date(year, month, calendar.monthrange(year, month)[1])


def _month_period(year: int, month: int, note: str = "") -> Period:
    return Period(date(year, month, 1), month_end(year, month), f"in {calendar.month_name[month]} {year}", note)


def _quarter_period(year: int, quarter: int, note: str = "") -> Period:
    first = 3 * quarter - 2
    return Period(date(year, first, 1), month_end(year, first + 2), f"in Q{quarter} {year}", note)


def _latest_year(month: int, last: date) -> int:
    """The year of the latest occurrence of `month` on or before the data's last date."""
    return last.year if date(last.year, month, 1) <= last else last.year - 1


def parse_date_text(text: str, last: date) -> date | None:
    """One date written in a question: ISO, US m/d/Y, d.m.Y or 'March 15(, 2024)'."""
    text = text.strip().lower().replace(",", " ")
    text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text)
    try:
        if re.fullmatch(_ISO, text):
            year, month, day = (int(part) for part in re.split(r"[-/]", text))
            return date(year, month, day)
        if re.fullmatch(_US, text):
            month, day, year = (int(part) for part in text.split("/"))
            return date(year, month, day)
        if re.fullmatch(_DOTTED, text):
            day, month, year = (int(part) for part in text.split("."))
            return date(year, month, day)
        words = [word.strip(".") for word in text.split() if word != "of"]
        if words and words[0] in MONTHS:
            month, day = MONTHS[words[0]], int(words[1])
            year = int(words[2]) if len(words) > 2 else _latest_year(month, last)
            return date(year, month, day)
        if len(words) >= 2 and words[1] in MONTHS:
            month, day = MONTHS[words[1]], int(words[0])
            year = int(words[2]) if len(words) > 2 else _latest_year(month, last)
            return date(year, month, day)
    except (ValueError, IndexError):
        return None
    return None


class _Finder:
    """Scans a question once; each matched span is consumed so later patterns skip it."""

    def __init__(self, text: str, first: date, last: date) -> None:
        self.text, self.first, self.last = text, first, last
        self.used: list[tuple[int, int]] = []
        self.found: list[tuple[int, Period]] = []

    def free(self, start: int, end: int) -> bool:
        return all(end <= a or start >= b for a, b in self.used)

    def scan(self, pattern: str, build) -> None:
        for match in re.finditer(pattern, self.text):
            if self.free(match.start(), match.end()):
                period = build(match)
                if period is not None:
                    self.used.append((match.start(), match.end()))
                    self.found.append((match.start(), period))

    def month_ok(self, match: re.Match, name: str, has_year: bool) -> bool:
        if name not in _AMBIGUOUS_MONTHS or has_year:
            return True
        before = self.text[: match.start()].split()
        return bool(before) and before[-1] in _PREPOSITIONS


def find_periods(text: str, first: date, last: date) -> tuple[list[Period], list[tuple[int, int]]]:
    """Periods named in `text` (normalised, lower case) in order, and the character spans used."""
    f = _Finder(text, first, last)

    def date_range(m: re.Match) -> Period | None:
        start, end = parse_date_text(m.group("a"), last), parse_date_text(m.group("b"), last)
        if not start or not end or end < start:
            return None
        return Period(start, end, f"from {start.isoformat()} to {end.isoformat()}")

    f.scan(rf"\bbetween\s+(?P<a>{DATE_RE})\s+and\s+(?P<b>{DATE_RE})", date_range)
    f.scan(rf"(?:from\s+)?(?P<a>{DATE_RE})\s+(?:to|through|thru|till|until|-)\s+(?P<b>{DATE_RE})", date_range)

    def month_range(m: re.Match) -> Period | None:
        m1, m2 = MONTHS[m.group("m1")], MONTHS[m.group("m2")]
        y2 = int(m.group("y2")) if m.group("y2") else _latest_year(m2, last)
        y1 = int(m.group("y1")) if m.group("y1") else (y2 if m1 <= m2 else y2 - 1)
        start, end = date(y1, m1, 1), month_end(y2, m2)
        return Period(start, end, f"from {calendar.month_name[m1]} {y1} to {calendar.month_name[m2]} {y2}") if start <= end else None

    f.scan(rf"\b(?:between|from)\s+(?P<m1>{_MONTH_RE})\.?(?:\s+(?P<y1>\d{{4}}))?\s+(?:and|to|through|thru|till|until|-)\s+(?P<m2>{_MONTH_RE})\.?(?:\s+(?P<y2>\d{{4}}))?\b", month_range)

    def bounded(m: re.Match) -> Period | None:
        word, target = m.group("w"), m.group("d")
        day = parse_date_text(target, last)
        if day is None:
            return None
        if word == "since" or word == "from":
            return Period(day, last, f"since {day.isoformat()}")
        if word == "after":
            return Period(day + timedelta(days=1), last, f"after {day.isoformat()}")
        if word == "before":
            return Period(first, day - timedelta(days=1), f"before {day.isoformat()}")
        return Period(first, day, f"up to {day.isoformat()}")

    f.scan(rf"\b(?P<w>since|after|before|until|till|through|from)\s+(?P<d>{DATE_RE})", bounded)

    def one_day(m: re.Match) -> Period | None:
        day = parse_date_text(m.group(0), last)
        return Period(day, day, f"on {day.isoformat()}") if day else None

    f.scan(DATE_RE, one_day)

    def quarter(m: re.Match) -> Period | None:
        groups = m.groupdict()
        number = int(groups["q"]) if groups.get("q") else _ORDINAL_QUARTERS[groups["o"]]
        year = int(m.group("y")) if m.group("y") else (last.year if date(last.year, 3 * number - 2, 1) <= last else last.year - 1)
        return _quarter_period(year, number)

    f.scan(r"\bq(?P<q>[1-4])(?:\s*(?:of\s+)?(?P<y>\d{4}))?\b", quarter)
    f.scan(r"\b(?P<o>last|final)\s+quarter\s+of\s+(?P<y>\d{4})\b", quarter)
    f.scan(r"\b(?P<o>first|second|third|fourth|1st|2nd|3rd|4th|final)\s+quarter(?:\s+of\s+(?P<y>\d{4}))?\b", quarter)

    def relative(m: re.Match) -> Period | None:
        which, unit = m.group("which"), m.group("unit")
        note = f'"{which} {unit}" is taken relative to your latest transaction, on {last.isoformat()}'

        if unit == "month":
            year, month = (last.year, last.month) if which in ("this", "current") else ((last.year, last.month - 1) if last.month > 1 else (last.year - 1, 12))
            return _month_period(year, month, note)
        if unit == "quarter":
            number = (last.month - 1) // 3 + 1
            year = last.year
            if which not in ("this", "current"):
                number, year = (number - 1, year) if number > 1 else (4, year - 1)
            return _quarter_period(year, number, note)
        if unit == "week":
            monday = last - timedelta(days=last.weekday())
            start = monday if which in ("this", "current") else monday - timedelta(days=7)
            return Period(start, start + timedelta(days=6), f"in the week of {start.isoformat()}", note)
        year = last.year if which in ("this", "current") else last.year - 1
        return Period(date(year, 1, 1), date(year, 12, 31), f"in {year}", note)

    f.scan(r"\b(?P<which>last|previous|past|prior|this|current)\s+(?P<unit>month|quarter|year|week)\b", relative)

    def trailing(m: re.Match) -> Period | None:
        count = int(m.group("n")) if m.group("n").isdigit() else _NUMBERS[m.group("n")]
        unit = m.group("unit").rstrip("s")
        if unit == "day":
            start = last - timedelta(days=count - 1)
        elif unit == "week":
            start = last - timedelta(days=7 * count - 1)
        else:
            month_index = last.year * 12 + last.month - 1 - (count - 1)
            start = date(month_index // 12, month_index % 12 + 1, 1)
        return Period(start, last, f"in the last {count} {unit}s ({start.isoformat()} to {last.isoformat()})", f"The last {count} {unit}s end at your latest transaction, on {last.isoformat()}")

    f.scan(r"\b(?:last|past|previous)\s+(?P<n>\d{1,3}|" + "|".join(_NUMBERS) + r")\s+(?P<unit>days?|weeks?|months?)\b", trailing)
    f.scan(r"\b(?:year to date|ytd)\b", lambda m: Period(date(last.year, 1, 1), last, f"in {last.year} to date"))

    def half(m: re.Match) -> Period | None:
        second = (m.group("h") or m.group("o")) in ("2", "second", "last")
        year = int(m.group("y")) if m.group("y") else (last.year if not second or last.month >= 7 else last.year - 1)
        start = date(year, 7 if second else 1, 1)
        return Period(start, date(year, 12, 31) if second else date(year, 6, 30), f"in the {'second' if second else 'first'} half of {year}")

    f.scan(r"\b(?:h(?P<h>[12])|(?P<o>first|second|last)\s+half)(?:\s+(?:of\s+)?(?P<y>\d{4}))?\b", half)

    def season(m: re.Match) -> Period | None:
        first_month = {"spring": 3, "summer": 6, "fall": 9, "autumn": 9, "winter": 12}[m.group("s")]
        year = int(m.group("y")) if m.group("y") else _latest_year(first_month, last)
        if first_month == 12 and m.group("y"):  # "winter 2024": December 2023 to February 2024
            year -= 1
        start = date(year, first_month, 1)
        end_year, end_month = (year + 1, 2) if first_month == 12 else (year, first_month + 2)
        name = m.group("s")
        return Period(start, month_end(end_year, end_month), f"in the {name} ({start.isoformat()} to {month_end(end_year, end_month).isoformat()})",
                      f"The {name} is taken as {calendar.month_name[first_month]} to {calendar.month_name[end_month]}")

    f.scan(r"\b(?:in|during|over|this|last)\s+(?:the\s+)?(?P<s>spring|summer|fall|autumn|winter)(?:\s+(?:of\s+)?(?P<y>\d{4}))?\b", season)

    def month(m: re.Match) -> Period | None:
        name = m.group("m")
        if not f.month_ok(m, name, bool(m.group("y"))):
            return None
        number = MONTHS[name]
        return _month_period(int(m.group("y")) if m.group("y") else _latest_year(number, last), number)

    f.scan(rf"\b(?P<m>{_MONTH_RE})\b\.?(?:\s+(?P<y>\d{{4}})\b)?", month)
    f.scan(r"(?<![\d$#.,-])\b(?P<y>(?:19|20)\d{2})\b(?![.,]\d)", lambda m: Period(date(int(m.group("y")), 1, 1), date(int(m.group("y")), 12, 31), f"in {m.group('y')}"))
    ordered = [period for _, period in sorted(f.found, key=lambda item: item[0])]
    return ordered, sorted(f.used)
