"""Turn a question into a `Query`: which figure, over which rows.

Only parsing: no pandas arithmetic here. The rows are chosen by subjects (categories or
description phrases found in this table's vocabulary), periods and a flow (expense, income,
net); the kind says what to compute. A subject the table does not have is kept as `unknown`,
so the answer can say "no such transactions" instead of answering for everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from labs.rag.transactions.periods import Period, find_periods
from labs.rag.transactions.table import TransactionsTable
from labs.rag.transactions.text import AGGREGATE_WORDS, DATA_NOUNS, FIRST_PERSON, MONEY_WORDS, STOPWORDS, normalise, stem
from labs.rag.transactions.vocab import Subject

_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "twenty": 20}
_N = r"(\d{1,3}|" + "|".join(_NUMBER_WORDS) + r")"

_NET = re.compile(r"\b(?:net|profit|profits|loss|bottom line|cash ?flow|income minus|minus expenses|after expenses|left over|surplus|deficit)\b")
_INCOME = re.compile(
    r"\b(?:income|earn|earns|earned|earning|earnings|revenue|revenues|received|receive|came in|come in|coming in|deposits?|credits?|"
    r"pa(?:y|id|ys)\s+(?:me|us)|got paid|get paid|were paid|was paid|refunds?|refunded)\b|\bhow much\b.*\b(?:did|have)\s+(?:i|we)\s+(?:make|made)\b"
)
_EXPENSE = re.compile(
    r"\b(?:spend|spent|spending|spends|expense|expenses|expenditure|cost|costs|pay|paid|paying|bought|buy|purchase|purchases|purchased|"
    r"charges?|charged|bills?|outgoings|fees?|receipts?|went to|go to|goes to)\b"
)
_UNSUPPORTED = (
    (re.compile(r"\bwhy\b"), "it does not say why money was spent or earned"),
    (re.compile(r"\bbalance\b"), "it has no account balance, only the transactions themselves"),
    (re.compile(r"\b(?:forecast|predict|projected|projection|will i|will we|next (?:month|quarter|year))\b"), "it only records the past"),
    (re.compile(r"\b(?:should|could)\s+(?:i|we)\b|\bbudget\b"), "it has figures, not advice"),
)
_COMPARE = re.compile(r"\b(?:compare|compared|comparison|vs|versus|difference between)\b|\b(?:more|less|higher|lower|bigger|smaller|greater)\b.*\b(?:or|than)\b")
_SUMMARY = re.compile(r"\b(?:summary|summari[sz]e|overview|breakdown|report|by category|by categories|per category|by month|per month|monthly breakdown|where (?:does|did) (?:my|our) money go|spending by|expenses by|income by)\b")
_RANK_DIMENSION = re.compile(
    r"\b(?:which|what)\s+(?P<dim>category|categories|merchant|merchants|vendor|vendors|payee|payees|store|stores|shop|month|months|client|clients|customer)\b"
    r"|\btop\s+(?:" + _N + r"\s+)?(?P<dim2>categories|category|merchants|vendors|payees|stores|months|clients|customers)\b"
    r"|\b(?P<most>(?:spend|spent|spending)\s+(?:the\s+)?most(?:\s+money)?\s+on)\b"
    r"|\bwho\s+did\s+(?:i|we)\s+pay\s+(?:the\s+)?most\b"
)
_TOP = re.compile(r"\btop\s+" + _N + r"\b|\b" + _N + r"\s+(?:largest|biggest|highest|most expensive|priciest|smallest|cheapest|lowest|least expensive)\b|\b(?:largest|biggest|highest|smallest|cheapest|lowest)\s+" + _N + r"\b")
_LARGEST = re.compile(r"\b(?:largest|biggest|highest|most expensive|priciest|max|maximum|top)\b")
_SMALLEST = re.compile(r"\b(?:smallest|cheapest|lowest|least expensive|min|minimum)\b")
_AVERAGE = re.compile(r"\b(?:average|avg|mean|typical)\b|\bmonthly (?:spending|expenses|income|costs)\b")
_MONTHLY = re.compile(r"\b(?:month|monthly|per month|a month|each month)\b")
_COUNT = re.compile(r"\b(?:how many|number of|count)\b")
_LATEST = re.compile(r"\b(?:when did (?:i|we) last|last time|most recent|latest|lately)\b")
_EARLIEST = re.compile(r"\b(?:when did (?:i|we) first|first time|earliest)\b")
_LIST = re.compile(r"\b(?:list|show|display|see|which transactions|what transactions|what did (?:i|we) buy|everything|all (?:my|our|the))\b")
_TOTAL_WORDS = re.compile(r"\b(?:total|sum|how much|tally|altogether|overall|in total)\b")
# After "spend on", "paid for", ...: words that are not a merchant or category.
_NOT_A_SUBJECT = frozenset(
    """average total overall everything anything all stuff things items purchases expenses transactions spending money
    month months year years quarter quarters week weeks day days time times category categories merchant merchants vendor
    vendors it that this each every per most least more less the a an my our me us them what which so far business personal
    other recurring regular annual usual biggest largest thing things stuff item lot after before minus plus without including
    excluding""".split()
) | MONEY_WORDS | AGGREGATE_WORDS | DATA_NOUNS | FIRST_PERSON
_SUBJECT_AFTER = re.compile(r"\b(?:spen[dt]|spending|paid|pay|paying|purchases?|bought|buy|charges?|earn(?:ed)?|income|received)\s+(?:\w+\s+){0,2}?(?:on|at|for|from|to|with)\s+(?P<phrase>[a-z0-9&'. ]+)")
_PAID_WHOM = re.compile(r"\b(?:pay|paid|pays|paying)\s+(?!for\b|to\b|on\b|in\b|at\b|me\b|us\b|the\b|my\b|our\b|off\b|any\b|all\b|so\b|each\b|per\b)(?P<phrase>[a-z0-9&'.]+(?:\s+[a-z0-9&'.]+)?)")
_HOW_MUCH_WHAT = re.compile(r"\bhow much\s+(?P<phrase>[a-z]+(?:\s+[a-z]+)?)\s+(?:did|have|do|had|does)\s+(?:i|we)\b")
_NOUN_BEFORE_LEDGER = re.compile(r"\b(?P<phrase>[a-z]+)\s+(?:expenses|costs|spending|purchases|payments|bills|charges|fees|receipts)\b")
_PHRASE_END = re.compile(r"\s+(?:in|during|last|this|between|since|from|before|after|until|vs|versus|or|and|than|so|per|each|over|compared|the\s+most|most|overall|in total)\b.*$")


@dataclass(frozen=True)
class Scope:
    """Which rows: subjects (see `answers.select`), periods (OR'd) and the flow."""

    subjects: tuple[Subject, ...] = ()
    periods: tuple[Period, ...] = ()
    flow: str | None = None  # "expense" | "income" | None (both)


@dataclass(frozen=True)
class Query:
    """What to compute: `kind` over `scope`; `sides` for comparisons."""

    kind: str
    scope: Scope
    flow: str | None = None  # "expense" | "income" | "net" | None (not said)
    n: int = 0
    direction: str = "largest"
    dimension: str = ""  # for rankings and summaries: "category", "merchant", "month", "" (both)
    sides: tuple[Scope, Scope] | None = None
    unknown: str = ""
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def _number(text: str) -> int:
    return int(text) if text.isdigit() else _NUMBER_WORDS[text]


def _flow(text: str) -> str | None:
    if _NET.search(text):
        return "net"
    income = bool(_INCOME.search(text))
    expense = bool(_EXPENSE.search(_INCOME.sub(" ", text)))
    if income and expense:
        return "both"
    return "income" if income else "expense" if expense else None


def _unknown_subject(text: str, covered: set[str]) -> tuple[str, bool]:
    """A merchant/category the question names ("spend on Netflix", "how much tax did I pay")
    that the table does not have: (the whole phrase, whether part of it was not understood)."""
    for pattern in (_SUBJECT_AFTER, _PAID_WHOM, _HOW_MUCH_WHAT, _NOUN_BEFORE_LEDGER):
        for match in pattern.finditer(text):
            phrase = _PHRASE_END.sub("", match.group("phrase").strip(" .?!,")).strip(" .?!,")
            words = [w.strip(".") for w in re.findall(r"[a-z0-9&'.]+", phrase)]
            content = [w for w in words if w and w not in STOPWORDS and w not in _NOT_A_SUBJECT and not w.isdigit()]
            leftover = [w for w in content if stem(w) not in covered]
            if leftover:
                return " ".join(content), True
    return "", False


def parse_question(table: TransactionsTable, question: str) -> Query:
    """The query a transaction question asks for (assumes the router already said it is one)."""
    text = normalise(question).strip()
    periods, spans = find_periods(text, table.first_date, table.last_date)
    dated = set()
    for start, end in spans:
        dated.update(range(start, end))
    undated = "".join(" " if index in dated else char for index, char in enumerate(text))
    token_matches = list(re.finditer(r"[a-z0-9]+", text))
    blocked = {index for index, match in enumerate(token_matches) if match.start() in dated}
    subjects = table.vocabulary.find_subjects([stem(match.group(0)) for match in token_matches], blocked)
    if any(subject.strong for subject in subjects):  # "Hertz rentals": the merchant is enough
        subjects = [subject for subject in subjects if subject.strong]
    # "Microsoft Office": a word of a category name right next to a merchant is part of a product name.
    texts = [subject for subject in subjects if subject.kind == "text"]
    subjects = [s for s in subjects if not (s.via == "part" and any(t.end == s.start or s.end == t.start for t in texts))]
    covered = {stem(match.group(0)) for index, match in enumerate(token_matches) if any(s.start <= index < s.end for s in subjects)}
    flow = _flow(undated)
    scope = Scope(tuple(subjects), tuple(periods), flow if flow in ("expense", "income") else None)
    notes = [period.note for period in periods if period.note]

    unknown, not_understood = _unknown_subject(undated, covered)
    # A phrase with words outside the data ("dog food") is not answered by a synonym or a
    # description word it happens to contain ("food" -> Meals); a category or merchant name wins.
    if unknown and not_understood and all(subject.via not in ("name", "part") for subject in subjects):
        return Query("no_match", scope, flow, unknown=unknown, notes=notes)
    for pattern, reason in _UNSUPPORTED:
        if pattern.search(undated):
            return Query("unsupported", scope, flow, reason=reason, notes=notes)

    if _COMPARE.search(undated):
        return _compare(scope, flow, notes)
    if _AVERAGE.search(undated):
        monthly = bool(_MONTHLY.search(undated))
        return Query("average_monthly" if monthly else "average", scope, flow, notes=notes)
    ranking = _RANK_DIMENSION.search(undated)
    if ranking:
        dim = ranking.group("dim") or ranking.group("dim2") or ("category" if ranking.group("most") else "merchant")
        dim = {"categories": "category", "merchants": "merchant", "vendor": "merchant", "vendors": "merchant", "payee": "merchant", "payees": "merchant",
               "store": "merchant", "stores": "merchant", "shop": "merchant", "months": "month", "client": "merchant", "clients": "merchant",
               "customer": "merchant", "customers": "merchant"}.get(dim, dim)
        top = _TOP.search(undated)
        n = _number(next(g for g in top.groups() if g)) if top else 1
        if dim in ("merchant",) and re.search(r"\b(?:client|clients|customer|customers)\b", undated) and flow is None:
            flow = "income"
            scope = replace(scope, flow="income")
        return Query("ranking", scope, flow, n=n, dimension=dim, direction="smallest" if _SMALLEST.search(undated) else "largest", notes=notes)
    if _SUMMARY.search(undated):
        by_category = bool(re.search(r"\b(?:by|per) categor", undated))
        by_month = bool(re.search(r"\b(?:by|per) month|\bmonthly\b", undated))
        dimension = "category" if by_category and not by_month else "month" if by_month and not by_category else ""
        return Query("summary", scope, flow, dimension=dimension, notes=notes)
    top = _TOP.search(undated)
    if top:
        direction = "smallest" if _SMALLEST.search(undated) else "largest"
        return Query("top", scope, flow, n=_number(next(g for g in top.groups() if g)), direction=direction, notes=notes)
    if _LARGEST.search(undated) or _SMALLEST.search(undated):
        direction = "smallest" if _SMALLEST.search(undated) else "largest"
        return Query("extreme", scope, flow, direction=direction, notes=notes)
    if _COUNT.search(undated):
        return Query("count", scope, flow, notes=notes)
    if _LATEST.search(undated) or _EARLIEST.search(undated):
        return Query("latest" if _LATEST.search(undated) else "earliest", scope, flow, notes=notes)
    if _LIST.search(undated) and not _TOTAL_WORDS.search(undated):
        return Query("list", scope, flow, notes=notes)
    if _TOTAL_WORDS.search(undated) or flow or subjects or periods:
        return Query("total", scope, flow, notes=notes)
    return Query("unsupported", scope, flow, reason="I could not tell which figure you want", notes=notes)


def _compare(scope: Scope, flow: str | None, notes: list[str]) -> Query:
    """Two sides: two periods, else two subjects, else income against expenses."""
    if len(scope.periods) >= 2:
        sides = tuple(replace(scope, periods=(period,)) for period in scope.periods[:2])
    elif len(scope.subjects) >= 2:
        sides = tuple(replace(scope, subjects=(subject,)) for subject in scope.subjects[:2])
    elif flow in ("both", "net"):
        sides = (replace(scope, flow="income"), replace(scope, flow="expense"))
    else:
        return Query("unsupported", scope, flow, reason="I could not tell which two things to compare (name two months, quarters, categories or merchants)", notes=notes)
    return Query("compare", scope, flow, sides=sides, notes=notes)  # type: ignore[arg-type]
