"""What a loaded table talks about: its categories, merchants and description words.

Built from the table itself (never a fixed list), so "Geico" or "Bank Fees" are recognised in a
question only when the user's data has them. A small synonym list ("gas" for a Fuel category)
applies only to categories actually present.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import pandas as pd

from labs.rag.transactions.text import MONEY_WORDS, STOPWORDS, stem, stems, tokens

# Leading words of a bank description that are not the merchant ("Payment from Acme Corp").
_PREFIX_WORDS = frozenset(
    "payment payments from to refund refunds pos purchase debit credit card ach transfer deposit online the recurring direct dd sq tst paypal pp checkcard visa mastercard".split()
)
# Single words too common to identify a merchant alone ("Best Buy" needs both words).
_COMMON_WORDS = frozenset(
    """best home office general first american united blue red green city state national great new big
    smart dinner lunch breakfast the mister car gas oil wash payment circle""".split()
)
# Description words that say nothing about what was bought.
_GENERIC_WORDS = MONEY_WORDS | STOPWORDS | frozenset(
    """com www inc llc corp co ltd plan annual monthly quarterly renewal membership team pro plus standard starter
    business all apps seat online returned meeting client""".split()
)
# Category tokens too generic to stand for their category alone ("Bank Fees" needs both words).
_GENERIC_CATEGORY_WORDS = frozenset("service supply other general misc miscellaneous and expense income cost fee payment business personal professional bank".split())
# Whole-category synonyms, applied only when the table has a category containing the key word.
CATEGORY_SYNONYMS: dict[str, tuple[str, ...]] = {
    "fuel": ("gas", "gasoline", "petrol", "diesel"),
    "vehicle": ("car", "cars", "auto", "automobile", "truck"),
    "meal": ("food", "dining", "restaurant", "restaurants", "eating out"),
    "advertising": ("ads", "marketing", "advertisement", "advertisements"),
    "hardware": ("equipment", "electronics", "computers"),
    "office": ("stationery", "office supplies"),
    "refund": ("returns",),
    "client": ("clients", "client payments", "customers"),
    "professional": ("accounting", "accountant", "legal", "lawyer", "contractors", "consulting", "freelancers"),
    "travel": ("travelling", "traveling", "trips", "business trips"),
    "utility": ("utilities",),
}


@dataclass(frozen=True)
class Subject:
    """Something a question is about: a category, or a phrase to find in descriptions."""

    kind: str  # "category" | "text"
    value: str  # the category name, or the stemmed phrase matched in descriptions
    label: str  # how answers name it
    start: int  # token span in the question
    end: int
    strong: bool  # a category or merchant (vs a word that merely occurs in some description)
    via: str = "name"  # "name" (category/merchant), "part" ("office" of Office Supplies), "synonym" ("gas" for Fuel), "word"


def merchant_of(description: str) -> str:
    """'Payment from Acme Corp - Invoice 12' -> 'Acme Corp'; 'Shell #4471' -> 'Shell'."""
    for chunk in re.split(r"\s+[-\u2013|]\s+|[#*(]", description):
        words = chunk.split()
        while words and words[0].lower().strip(":") in _PREFIX_WORDS:
            words = words[1:]
        kept: list[str] = []
        for word in words:
            if re.match(r"\d", word) and not re.fullmatch(r"\d[a-zA-Z]{3,}", word):  # '365', '14in'; not '1Password'
                break
            kept.append(word)
        if kept:
            return " ".join(kept[:3])
    return ""


@dataclass
class Vocabulary:
    """Lookup of a table's categories, merchants and description words, by stemmed phrase."""

    categories: list[str]
    category_phrases: dict[str, str]  # stemmed phrase -> category
    synonym_phrases: dict[str, str]  # stemmed phrase -> category
    merchant_phrases: dict[str, str]  # stemmed phrase -> merchant display name
    merchants: list[str]
    words: set[str]
    descriptions: list[str] = field(repr=False)  # " stemmed tokens " of each distinct description
    row_descriptions: pd.Series = field(repr=False, default_factory=lambda: pd.Series(dtype=object))  # same, per table row

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, has_category: bool) -> Vocabulary:
        categories = sorted({c for c in frame["category"].unique() if c}) if has_category else []
        category_phrases: dict[str, str] = {}
        for category in categories:
            words = stems(category)
            category_phrases.setdefault(" ".join(words), category)
            for word in words:
                if word not in _GENERIC_CATEGORY_WORDS and len(word) >= 4:
                    category_phrases.setdefault(word, category)
        synonym_phrases: dict[str, str] = {}
        for category in categories:
            for key, synonyms in CATEGORY_SYNONYMS.items():
                if key in stems(category):
                    for synonym in synonyms:
                        synonym_phrases.setdefault(" ".join(stems(synonym)), category)
        descriptions = sorted({str(d) for d in frame["description"].unique()})
        merchant_phrases: dict[str, str] = {}
        merchants: set[str] = set()
        for description in descriptions:
            merchant = merchant_of(description)
            words = stems(merchant)
            if not words:
                continue
            merchants.add(merchant)
            merchant_phrases.setdefault(" ".join(words), merchant)
            if words[0] not in _COMMON_WORDS and words[0] not in _GENERIC_WORDS and len(words[0]) >= 3:
                merchant_phrases.setdefault(words[0], merchant.split()[0])
        words_seen = {stem(t) for d in descriptions for t in tokens(d)}
        words = {w for w in words_seen if len(w) >= 3 and w.isalpha() and w not in _GENERIC_WORDS}
        return cls(
            categories=categories,
            category_phrases=category_phrases,
            synonym_phrases=synonym_phrases,
            merchant_phrases=merchant_phrases,
            merchants=sorted(merchants),
            words=words,
            descriptions=[f" {' '.join(stems(d))} " for d in descriptions],
            row_descriptions=frame["description"].map(lambda d: f" {' '.join(stems(str(d)))} "),
        )

    def _in_descriptions(self, phrase: str) -> bool:
        needle = f" {phrase} "
        return any(needle in description for description in self.descriptions)

    def _lookup(self, phrase: str, words: list[str], start: int, end: int) -> Subject | None:
        if phrase in self.category_phrases:
            category = self.category_phrases[phrase]
            whole = phrase == " ".join(stems(category))
            return Subject("category", category, category, start, end, True, "name" if whole else "part")
        if phrase in self.merchant_phrases:
            return Subject("text", phrase, self.merchant_phrases[phrase], start, end, True)
        if phrase in self.synonym_phrases:
            category = self.synonym_phrases[phrase]
            return Subject("category", category, category, start, end, True, "synonym")
        if words[0] in STOPWORDS or words[-1] in STOPWORDS or not all(w in self.words or w in STOPWORDS for w in words):
            return None
        if self._in_descriptions(phrase):
            return Subject("text", phrase, phrase, start, end, False, "word")
        return None

    def find_subjects(self, question_stems: list[str], blocked: set[int] = frozenset()) -> list[Subject]:
        """Longest phrases first, left to right, never overlapping each other or `blocked` tokens."""
        taken = set(blocked)
        found: list[Subject] = []
        for size in range(4, 0, -1):
            for start in range(0, len(question_stems) - size + 1):
                span = range(start, start + size)
                if any(index in taken for index in span):
                    continue
                words = question_stems[start : start + size]
                subject = self._lookup(" ".join(words), words, start, start + size)
                if subject:
                    found.append(subject)
                    taken.update(span)
        return sorted(found, key=lambda subject: subject.start)

    def closest(self, text: str, limit: int = 3) -> list[str]:
        """Categories and merchants spelled most like `text` (for "no such transactions")."""
        names = self.categories + self.merchants
        lowered = {name.lower(): name for name in names}
        matches = difflib.get_close_matches(text.lower(), list(lowered), n=limit, cutoff=0.5)
        return [lowered[match] for match in matches]

    def description_mask(self, phrase: str) -> pd.Series:
        """Rows of the table whose description contains the stemmed phrase as whole words."""
        needle = f" {phrase} "
        return self.row_descriptions.map(lambda d: needle in d).astype(bool)
