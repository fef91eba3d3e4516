"""Tokens and word lists shared by the vocabulary, the question parser and the router."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> str:
    """Lower case, straight apostrophes: the form every matcher works on."""
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def stem(token: str) -> str:
    """Crude singular: 'supplies' -> 'supply', 'hotels' -> 'hotel' (same on both sides of a match)."""
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss") and not token.endswith("us"):
        return token[:-1]
    return token


def tokens(text: str) -> list[str]:
    """Alphanumeric runs of the normalised text ('Amazon.com' -> 'amazon', 'com')."""
    return _TOKEN.findall(normalise(text))


def stems(text: str) -> list[str]:
    return [stem(token) for token in tokens(text)]


# Function words: never a subject, never evidence either way.
STOPWORDS = frozenset(
    """a an the of in on at for from to by with and or but than vs versus as into over under per via about
    what which when where who whom whose how why is are was were be been being am do does did done have has
    had having can could would should will shall may might must it its this that these those there here
    any some all each every so far much many please just also only still ever yet up out off again then
    i me my mine myself we us our ours ourselves you your yours he she they them their his her
    show list give tell get got find let see know want need like""".split()
)

FIRST_PERSON = frozenset("i i'm i've i'd i'll me my mine myself we we're we've we'd our ours ourselves us".split())

# Words about money in general; a category or merchant word never needs to be one of these.
MONEY_WORDS = frozenset(
    """spend spends spent spending pay pays paid paying payment payments earn earns earned earning earnings
    income revenue revenues expense expenses expenditure expenditures cost costs costed buy buys bought buying
    purchase purchases purchased charge charges charged refund refunds refunded money cash profit profits loss
    losses owe owed bill bills billed invoice invoices invoiced subscription subscriptions fee fees salary budget
    dollar dollars euro euros bucks balance deposit deposits deposited withdrawal withdrawals transaction
    transactions financial finances financially outgoings cashflow price prices priced sales order orders ordered
    receipt receipts net""".split()
)

# Nouns naming records in a ledger (stronger than a money verb: "expenses" vs "pay").
LEDGER_WORDS = frozenset(
    """transaction transactions expense expenses expenditure expenditures spending income earnings revenue
    revenues purchases charges refunds payments deposits withdrawals outgoings cashflow profit profits
    subscriptions bills costs fees receipts net""".split()
)

# Words asking for a figure over the data.
AGGREGATE_WORDS = frozenset(
    """total totals sum overall largest biggest smallest highest lowest most least top average avg mean
    count number breakdown summary summarize summarise overview compare comparison versus vs more less
    list show cheapest priciest expensive max maximum min minimum latest recent higher lower bigger smaller
    much many""".split()
)

# Data-ish nouns that make a bare question about "the" table ("show the transactions by category").
DATA_NOUNS = frozenset("category categories merchant merchants vendor vendors payee payees month months monthly quarter quarters quarterly year years yearly week weeks day days".split())
