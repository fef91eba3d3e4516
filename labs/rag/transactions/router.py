"""Decide whether a question is about the user's own transactions (data) or general (model).

Keyword matching sends "How do I pay attention in class?" or "Explain income tax brackets" to
the table. Instead the router adds up evidence that the question is about *this user's money in
this table*, and subtracts evidence that it asks for general knowledge:

+ first person ("my", "we", ...) or "the data/file" together with money words;
+ ledger nouns (expenses, transactions, income), aggregates over them (total, largest, top);
+ categories and merchants that exist in the loaded table, description words from it;
+ dates and past-tense money verbs ("spent", "did I pay");
+ a terse query made only of such words ("Fuel costs last month");
- how-to / advice / hypotheticals / definitions / creative requests ("how do I", "should I",
  "if I earn", "explain", "write a poem"), third parties doing the spending ("does a Tesla
  cost", "can Visa process") and world-knowledge framing ("in history", "households");
- no money word, ledger noun or aggregate at all, unless every word is a data word ("Fuel in
  March"): "planning a trip to Chicago in March" names a category and a date but asks no figure.

Deterministic, no model, microseconds per question. `explain_route` returns the signals for
logging and tests.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from labs.rag.transactions.periods import find_periods
from labs.rag.transactions.table import TransactionsTable
from labs.rag.transactions.text import (
    AGGREGATE_WORDS,
    DATA_NOUNS,
    FIRST_PERSON,
    LEDGER_WORDS,
    MONEY_WORDS,
    STOPWORDS,
    normalise,
    stem,
)

logger = logging.getLogger(__name__)

THRESHOLD = 3.0

# Phrases whose money word is not about money; removed before anything is counted.
_IDIOMS = (
    r"\bpa(?:y|ys|id|ying)\s+(?:close\s+|more\s+|full\s+)?attention\b",
    r"\bpa(?:y|ys|id|ying)\s+(?:a\s+)?(?:visit|respects|homage|tribute|compliments?|the price|off)\b",
    r"\bspen(?:d|ds|t|ding)\s+(?:\w+\s+){0,2}(?:time|day|days|week|weeks|weekend|weekends|evening|evenings|morning|mornings|night|nights|hours?|minutes?|life|summer|holidays?|vacation|years|energy|effort|afternoon|christmas)\b",
    r"\bincome tax(?:es)?\b",
    r"\bmake sense\b",
    r"\bcost of living\b",
)
_DATA_REFERENCE = re.compile(r"\b(?:the|this|these|my|our)\s+(?:data|dataset|file|csv|table|spreadsheet|ledger|statements?|records|books|accounts?|bank statements?)\b")
_PAST_MONEY = re.compile(r"\b(?:spent|paid|earned|bought|purchased|charged|refunded|received|billed|invoiced|came in|went out)\b|\b(?:did|have|had)\s+(?:i|we)\b|\b(?:was|were)\s+(?:my|our)\b")
_HOW_MUCH_MADE = re.compile(r"\bhow much\b.*\b(?:make|made|went|go|goes|gone)\b|\bmade\b.*\bmoney\b")
_BY_DIMENSION = re.compile(r"\b(?:by|per|each)\s+(?:month|category|categories|merchant|vendor|quarter|week)\b")
_MATH = re.compile(r"\d\s*(?:%|percent)\s+of\b|\d\s*[-+*/x\u00d7^]\s*\d|\b(?:calculate|convert|conversion|exchange rate|interest rate)\b")
# Asking how to do something, for advice, for a text, or a hypothetical: general even with "my".
_HARD_GENERAL = re.compile(
    r"\bhow\s+(?:do|can|should|could|would|might|to)\s+(?:i|we|you|one)?\b(?!\s+(?:have|spent|spend\s+(?:on|at|in)\b))|\bhow to\b"
    r"|\b(?:should|could|shall|would)\s+(?:i|we)\b|\b(?:if|suppose|supposing|assuming)\s+(?:i|we|you|someone|a)\b|\bhypothetical"
    r"|\b(?:tips?|advice|advise|ways? to|best way|recommend\w*|suggest\w*|ideas? for)\b"
    r"|\b(?:need|want|needs)\s+help\b|\bhelp\s+(?:me\s+|us\s+)?(?:with|plan|planning|write|writing|choose|understand|decide|find)\b"
    r"|\b(?:write|poem|story|joke|jokes|translate|essay|email|letter|haiku|song|code|script|recipe)\b"
    r"|\b(?:explain|define|definition|meaning of|what does .* mean|difference between|pros and cons)\b"
)
# Definitions, people, history and comparisons: general unless the question is first person.
_SOFT_GENERAL = re.compile(
    r"^(?:what|who|where)(?:'s|\s+is|\s+are|\s+was|\s+were)\b|^(?:who|why|where)\b|\bwhy\b|\btell me about\b"
    r"|\bhistory\b|\bbetter\b|\bbest\b(?!\s+buy)|\bhow (?:does|do|did|is|are) (?!i\b|we\b|my\b|our\b)\w+"
)
_WORLD = re.compile(
    r"\b(?:in history|of all time|ever|in the world|world'?s?|households?|people|americans|countries|country|companies|company|"
    r"government|nation|national|global|average person|typical|economy|industry|stock|stocks|market|per second|per hour)\b"
)
# "the cost of a wedding", "expenses when starting a business": a generic scenario, not this ledger.
_INDEFINITE_OWNER = re.compile(r"\b(?:of|for|in|\w+ing)\s+(?:a|an)\s+(?!month|week|year|day|quarter|single|given|row)\w+")
_AUXILIARY = re.compile(r"\b(?:does|do|did|can|could|will|would)\s+((?:[a-z0-9&']+\s+){0,3}?)(?:cost|costs|charge|charges|make|makes|earn|earns|pay|pays|spend|spends|process|sell|sells|price|get|take|need|come)\b")


@dataclass
class RouteDecision:
    """The verdict and the evidence behind it (for logs and for tuning on evidence)."""

    is_transaction: bool
    score: float
    signals: dict[str, float] = field(default_factory=dict)


def _third_party_subject(text: str) -> bool:
    """'does a Tesla cost', 'can Visa process', 'did the Apollo program cost' (not 'did the AWS bill come')."""
    for match in _AUXILIARY.finditer(text):
        subject = match.group(1).split()
        if not subject:
            continue
        if subject[0] in FIRST_PERSON or subject[0] in ("you", "it", "they", "that", "this"):
            continue
        if any(word in MONEY_WORDS or word in LEDGER_WORDS or stem(word) in ("bill", "subscription", "charge") for word in subject):
            continue
        if _DATA_REFERENCE.search(" ".join(["the"] + subject)):
            continue
        return True
    return False


def explain_route(table: TransactionsTable, question: str) -> RouteDecision:
    """Score the question; the signals say which evidence counted."""
    original = question.strip()
    text = normalise(original)
    for idiom in _IDIOMS:
        text = re.sub(idiom, " ", text)
    words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[$\u20ac\u00a3]", text)
    first_person = {w for w in words if w in FIRST_PERSON}
    if "us" in first_person and re.search(r"\bU\.?S\.?\b", original):
        first_person.discard("us")
    owner = bool(first_person) or bool(_DATA_REFERENCE.search(text))
    money = {w for w in words if w in MONEY_WORDS or w in ("$", "\u20ac", "\u00a3")}
    if _HOW_MUCH_MADE.search(text):
        money.add("made")
    ledger = {w for w in words if w in LEDGER_WORDS}
    aggregate = {w for w in words if w in AGGREGATE_WORDS} | ({"by"} if _BY_DIMENSION.search(text) else set())
    vocabulary = table.vocabulary
    periods, spans = find_periods(text, table.first_date, table.last_date)
    blocked_chars = set()
    for start, end in spans:
        blocked_chars.update(range(start, end))
    token_matches = list(re.finditer(r"[a-z0-9]+", text))
    blocked = {index for index, match in enumerate(token_matches) if match.start() in blocked_chars}
    subjects = vocabulary.find_subjects([stem(match.group(0)) for match in token_matches], blocked)
    strong = any(subject.strong for subject in subjects)
    weak = bool(subjects) and not strong
    past = bool(_PAST_MONEY.search(text))

    signals: dict[str, float] = {}
    if owner and (money or ledger):
        signals["owner+money"] = 3.0
    elif owner and subjects:
        signals["owner+data"] = 1.0
    if ledger:
        signals["ledger"] = 1.5
    if strong:
        signals["category/merchant"] = 1.5
    elif weak:
        signals["description word"] = 1.0
    if subjects and (money or ledger):
        signals["data+money"] = 1.0
    if aggregate and (money or ledger):
        signals["aggregate+money"] = 1.5
    if periods:
        signals["date"] = 1.0
    if past and (money or ledger or subjects):
        signals["past money"] = 1.0
    explained = set(FIRST_PERSON) | MONEY_WORDS | LEDGER_WORDS | AGGREGATE_WORDS | STOPWORDS | DATA_NOUNS
    subject_tokens = {index for subject in subjects for index in range(subject.start, subject.end)}
    content = [
        index
        for index, match in enumerate(token_matches)
        if index not in blocked and index not in subject_tokens and not match.group(0).isdigit() and match.group(0) not in explained
    ]
    if not content and (money or ledger or subjects):
        signals["terse query"] = 1.5

    undated = "".join(" " if index in blocked_chars else char for index, char in enumerate(text))
    if _HARD_GENERAL.search(text) or _MATH.search(undated):
        signals["how-to/advice/definition"] = -3.0
    elif not owner and (_SOFT_GENERAL.search(text) and not (aggregate or periods)):
        signals["general framing"] = -3.0
    elif not owner and (_WORLD.search(text) or _INDEFINITE_OWNER.search(text) or _third_party_subject(text)):
        signals["someone else's money"] = -3.0
    elif not owner and _SOFT_GENERAL.search(text) and not (money or ledger):
        signals["general framing"] = -3.0
    if not (money or ledger or aggregate or "terse query" in signals):
        signals["no money asked"] = -3.0  # "planning a trip to Chicago in March"
    score = sum(signals.values())
    decision = RouteDecision(score >= THRESHOLD, score, signals)
    logger.debug("route %r -> %s (%.1f: %s)", question, decision.is_transaction, score, signals)
    return decision


def route(table: TransactionsTable, question: str) -> bool:
    """True when the question should be answered from the transactions table."""
    return explain_route(table, question).is_transaction
