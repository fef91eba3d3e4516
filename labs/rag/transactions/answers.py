"""Compute a query's figures with pandas on integer cents and word them; never estimate.

Every answer carries `data`: the figures as numbers and the rows they came from, so a caller
(or a test) can check the sentence against the table. Expenses are stated as positive amounts
spent ("you spent $59.99"); net and income keep their sign.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from labs.rag.transactions.questions import Query, Scope, parse_question
from labs.rag.transactions.router import route
from labs.rag.transactions.table import EXPENSE, INCOME, TransactionsTable
from labs.rag.transactions.vocab import merchant_of

logger = logging.getLogger(__name__)

CAN_ANSWER = (
    "total expenses, income or net; the largest or smallest expense or income; spending by category or merchant; "
    "any month, quarter, year or date range; the top N expenses; average monthly spending; the number of transactions; "
    "a summary by category and month; and comparisons (e.g. fuel in March vs April)"
)
LIST_LIMIT = 25


@dataclass
class TransactionAnswer:
    """An exact answer from the table: text for the user, figures and rows for checking."""

    answer: str
    data: dict[str, Any]
    kind: str
    source: str = "transactions"


@dataclass
class _Context:
    table: TransactionsTable
    query: Query

    def money(self, cents: int) -> str:
        """'$1,295.83'; negative '-$12.50'."""
        sign = "-" if cents < 0 else ""
        return f"{sign}{self.table.currency_symbol}{abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def _row_dict(row: Any, has_category: bool) -> dict[str, Any]:
    return {
        "date": row.date.date().isoformat(),
        "description": row.description,
        "amount": round(row.cents / 100, 2),
        "type": row.type,
        "category": row.category if has_category else None,
    }


def _rows_data(table: TransactionsTable, rows: pd.DataFrame) -> list[dict[str, Any]]:
    return [_row_dict(row, table.has_category) for row in rows.itertuples(index=False)]


def select(table: TransactionsTable, scope: Scope) -> pd.DataFrame:
    """Rows in scope: categories OR'd, merchants OR'd, description words AND'ed, groups AND'ed; periods OR'd."""
    frame = table.frame
    mask = pd.Series(True, index=frame.index)
    categories = [subject.value for subject in scope.subjects if subject.kind == "category"]
    merchants = [subject.value for subject in scope.subjects if subject.kind == "text" and subject.strong]
    words = [subject.value for subject in scope.subjects if subject.kind == "text" and not subject.strong]
    if categories:
        mask &= frame["category"].isin(categories)
    if merchants:  # "Uber and Lyft": either
        text_mask = pd.Series(False, index=frame.index)
        for phrase in merchants:
            text_mask |= table.vocabulary.description_mask(phrase)
        mask &= text_mask
    for phrase in words:  # "hotels in Chicago": both
        mask &= table.vocabulary.description_mask(phrase)
    if scope.periods:
        period_mask = pd.Series(False, index=frame.index)
        for period in scope.periods:
            period_mask |= period.mask(frame)
        mask &= period_mask
    if scope.flow == "expense":
        mask &= frame["type"] == EXPENSE
    elif scope.flow == "income":
        mask &= frame["type"] == INCOME
    return frame[mask]


def _spent(rows: pd.DataFrame) -> int:
    return int(-rows.loc[rows["type"] == EXPENSE, "cents"].sum())


def _received(rows: pd.DataFrame) -> int:
    return int(rows.loc[rows["type"] == INCOME, "cents"].sum())


def _flow_of(ctx: _Context, scope: Scope, default: str = "expense") -> str:
    """The flow asked for, else the subjects' own (a client-income category means income)."""
    if ctx.query.flow in ("expense", "income"):
        return ctx.query.flow
    if scope.subjects:
        rows = select(ctx.table, replace(scope, flow=None))
        if len(rows) and (rows["type"] == INCOME).all():
            return "income"
    return default


def _subject_text(scope: Scope, flow: str) -> str:
    parts = []
    for subject in scope.subjects:
        if subject.kind == "category":
            parts.append(subject.label)
        elif subject.strong:
            parts.append(subject.label)
        else:
            parts.append(f'"{subject.label}"')
    if not parts:
        return ""
    joined = " and ".join(parts) if len(parts) <= 2 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if all(s.kind == "text" and not s.strong for s in scope.subjects):
        return f" on transactions matching {joined}"
    if flow == "income":
        return f" from {joined}"
    return (" at " if all(s.kind == "text" and s.strong for s in scope.subjects) else " on ") + joined


def _period_text(scope: Scope) -> str:
    return "".join(f" {period.phrase}" if index == 0 else f" and {period.phrase}" for index, period in enumerate(scope.periods))


def _count_text(count: int, word: str = "transaction") -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _answer(ctx: _Context, text: str, figures: dict[str, Any], rows: pd.DataFrame | None) -> TransactionAnswer:
    for note in dict.fromkeys(ctx.query.notes):
        text += ("\n\n" if "\n" in text else " ") + note[0].upper() + note[1:] + "."
    data: dict[str, Any] = {"kind": ctx.query.kind, "figures": figures}
    if rows is not None:
        data["row_count"] = int(len(rows))
        data["rows"] = _rows_data(ctx.table, rows)
    data["filters"] = _filters(ctx.query.scope)
    return TransactionAnswer(answer=text, data=data, kind=ctx.query.kind)


def _filters(scope: Scope) -> dict[str, Any]:
    return {
        "categories": [s.value for s in scope.subjects if s.kind == "category"],
        "descriptions": [s.label for s in scope.subjects if s.kind == "text"],
        "periods": [{"start": p.start.isoformat(), "end": p.end.isoformat(), "label": p.phrase} for p in scope.periods],
        "flow": scope.flow,
    }


def _total(ctx: _Context) -> TransactionAnswer:
    query, scope = ctx.query, ctx.query.scope
    if query.flow in ("net", "both") or (query.flow is None and not scope.subjects):
        rows = select(ctx.table, replace(scope, flow=None))
        income, spent = _received(rows), _spent(rows)
        where = _subject_text(scope, "expense") + _period_text(scope)
        text = f"Your net{where} was {ctx.money(income - spent)}: income {ctx.money(income)} minus expenses {ctx.money(spent)} ({_count_text(len(rows))})."
        return _answer(ctx, text, {"income": income / 100, "expenses": spent / 100, "net": (income - spent) / 100}, rows)
    flow = _flow_of(ctx, scope)
    rows = select(ctx.table, replace(scope, flow=flow))
    where = _subject_text(scope, flow) + _period_text(scope)
    if flow == "income":
        amount = _received(rows)
        text = f"You received {ctx.money(amount)}{where} ({_count_text(len(rows))})." if scope.subjects or scope.periods else f"Your total income was {ctx.money(amount)} ({_count_text(len(rows))})."
        if not len(rows):
            text = f"You have no income{where}: {ctx.money(0)}."
        return _answer(ctx, text, {"income": amount / 100, "count": int(len(rows))}, rows)
    amount = _spent(rows)
    if scope.subjects or scope.periods:
        text = f"You spent {ctx.money(amount)}{where} ({_count_text(len(rows))})." if len(rows) else f"You have no expenses{where}: {ctx.money(0)}."
    else:
        text = f"Your total expenses were {ctx.money(amount)} ({_count_text(len(rows))})."
    back = select(ctx.table, replace(scope, flow="income")) if scope.subjects else rows.iloc[0:0]
    if len(back):
        text += f" You also received {ctx.money(_received(back))} back{_subject_text(scope, 'income')} ({_count_text(len(back))}, e.g. refunds), not subtracted."
    return _answer(ctx, text, {"expenses": amount / 100, "count": int(len(rows))}, rows)


def _extreme(ctx: _Context) -> TransactionAnswer:
    scope, largest = ctx.query.scope, ctx.query.direction == "largest"
    flow = _flow_of(ctx, scope)
    rows = select(ctx.table, replace(scope, flow=flow))
    word = ("largest" if largest else "smallest") + (" expense" if flow == "expense" else " income")
    where = _subject_text(scope, flow) + _period_text(scope)
    if not len(rows):
        return _answer(ctx, f"You have no {'expenses' if flow == 'expense' else 'income'}{where}.", {}, rows)
    size = rows["cents"].abs()
    pick = rows.loc[size.idxmax() if largest else size.idxmin()]
    amount = abs(int(pick["cents"]))
    category = f" ({pick['category']})" if ctx.table.has_category else ""
    day = pick["date"].date().isoformat()
    if flow == "expense":
        text = f"Your {word}{where} was {ctx.money(amount)} for {pick['description']} on {day}{category}."
    else:
        text = f"Your {word}{where} was {ctx.money(amount)}: {pick['description']} on {day}{category}."
    return _answer(ctx, text, {"amount": amount / 100, "date": day, "description": pick["description"]}, rows.loc[[pick.name]])


def _table(ctx: _Context, rows: pd.DataFrame, spend: bool) -> str:
    lines = ["| # | Date | Description | Category | Amount |" if ctx.table.has_category else "| # | Date | Description | Amount |"]
    lines.append("|---|---|---|---|---:|" if ctx.table.has_category else "|---|---|---|---:|")
    for index, row in enumerate(rows.itertuples(index=False), start=1):
        amount = ctx.money(abs(row.cents) if spend else row.cents)
        category = f" {row.category} |" if ctx.table.has_category else ""
        lines.append(f"| {index} | {row.date.date().isoformat()} | {row.description} |{category} {amount} |")
    return "\n".join(lines)


def _top(ctx: _Context) -> TransactionAnswer:
    scope, largest, n = ctx.query.scope, ctx.query.direction == "largest", max(ctx.query.n, 1)
    flow = _flow_of(ctx, scope)
    rows = select(ctx.table, replace(scope, flow=flow))
    ordered = rows.assign(size=rows["cents"].abs()).sort_values(["size", "date"], ascending=[not largest, True], kind="mergesort").drop(columns="size")
    picked = ordered.head(n)
    noun = "expenses" if flow == "expense" else "income transactions"
    where = _subject_text(scope, flow) + _period_text(scope)
    title = f"Your top {len(picked)} {noun}{where}" if largest else f"Your {len(picked)} smallest {noun}{where}"
    text = f"{title}:\n\n{_table(ctx, picked, flow == 'expense')}" if len(picked) else f"You have no {noun}{where}."
    return _answer(ctx, text, {"amounts": [abs(int(c)) / 100 for c in picked["cents"]]}, picked)


def _months_between(ctx: _Context, scope: Scope) -> tuple[int, str, str]:
    """Calendar months covered: the periods asked (clipped to the data), else the data's span."""
    first, last = ctx.table.first_date, ctx.table.last_date
    if scope.periods:
        first = max(first, min(p.start for p in scope.periods))
        last = min(last, max(p.end for p in scope.periods))
    if last < first:
        return 0, first.strftime("%B %Y"), last.strftime("%B %Y")
    return (last.year - first.year) * 12 + last.month - first.month + 1, first.strftime("%B %Y"), last.strftime("%B %Y")


def _average_monthly(ctx: _Context) -> TransactionAnswer:
    scope = ctx.query.scope
    flow = _flow_of(ctx, scope)
    rows = select(ctx.table, replace(scope, flow=flow))
    total = _spent(rows) if flow == "expense" else _received(rows)
    months, start, end = _months_between(ctx, scope)
    if not months:
        return _answer(ctx, "Your transactions do not cover that period.", {}, rows)
    average = round(total / months)
    noun = "spending" if flow == "expense" else "income"
    where = _subject_text(scope, flow)
    text = f"Your average monthly {noun}{where} was {ctx.money(average)} over {months} month{'s' if months != 1 else ''} ({start} to {end}; total {ctx.money(total)})."
    return _answer(ctx, text, {"average": average / 100, "months": months, "total": total / 100}, rows)


def _average(ctx: _Context) -> TransactionAnswer:
    scope = ctx.query.scope
    flow = _flow_of(ctx, scope)
    rows = select(ctx.table, replace(scope, flow=flow))
    if not len(rows):
        return _answer(ctx, "You have no such transactions.", {}, rows)
    total = _spent(rows) if flow == "expense" else _received(rows)
    average = round(total / len(rows))
    noun = "expense" if flow == "expense" else "income transaction"
    text = f"Your average {noun}{_subject_text(scope, flow)}{_period_text(scope)} was {ctx.money(average)} across {_count_text(len(rows))} (total {ctx.money(total)})."
    return _answer(ctx, text, {"average": average / 100, "count": int(len(rows)), "total": total / 100}, rows)


def _count(ctx: _Context) -> TransactionAnswer:
    scope = ctx.query.scope
    rows = select(ctx.table, scope)
    flow = scope.flow or "any"
    noun = {"expense": "expense", "income": "income transaction"}.get(flow, "transaction")
    where = _subject_text(scope, flow) + _period_text(scope)
    text = f"You have {_count_text(len(rows), noun)}{where}"
    if flow == "any" and len(rows):
        text += f" ({int((rows['type'] == EXPENSE).sum())} expenses, {int((rows['type'] == INCOME).sum())} income)"
    return _answer(ctx, text + ".", {"count": int(len(rows))}, rows)


def _latest(ctx: _Context) -> TransactionAnswer:
    scope = ctx.query.scope
    rows = select(ctx.table, scope)
    latest = ctx.query.kind == "latest"
    where = _subject_text(scope, scope.flow or "expense") + _period_text(scope)
    if not len(rows):
        return _answer(ctx, f"You have no transactions{where}.", {}, rows)
    pick = rows.iloc[-1] if latest else rows.iloc[0]
    amount = ctx.money(abs(int(pick["cents"])))
    verb = "paid" if pick["type"] == EXPENSE else "received"
    text = f"The {'most recent' if latest else 'first'} transaction{where} was on {pick['date'].date().isoformat()}: you {verb} {amount} ({pick['description']})."
    return _answer(ctx, text, {"date": pick["date"].date().isoformat(), "amount": abs(int(pick["cents"])) / 100}, rows.loc[[pick.name]])


def _list(ctx: _Context) -> TransactionAnswer:
    scope = ctx.query.scope
    rows = select(ctx.table, scope)
    where = _subject_text(scope, scope.flow or "expense") + _period_text(scope)
    if not len(rows):
        return _answer(ctx, f"You have no transactions{where}.", {}, rows)
    shown = rows.head(LIST_LIMIT)
    more = f" (showing the first {LIST_LIMIT})" if len(rows) > LIST_LIMIT else ""
    text = f"{_count_text(len(rows))}{where}{more}:\n\n{_table(ctx, shown, False)}"
    return _answer(ctx, text[0].upper() + text[1:], {"count": int(len(rows)), "expenses": _spent(rows) / 100, "income": _received(rows) / 100}, rows)


def _month_key(rows: pd.DataFrame) -> pd.Series:
    return rows["date"].dt.strftime("%Y-%m")


def _ranking(ctx: _Context) -> TransactionAnswer:
    query, scope = ctx.query, ctx.query.scope
    flow = _flow_of(ctx, scope)
    rows = select(ctx.table, replace(scope, flow=flow))
    if query.dimension == "category" and not ctx.table.has_category:
        return _unsupported(ctx, "your file has no Category column")
    keys = {"category": rows["category"], "merchant": rows["description"].map(lambda d: merchant_of(str(d)) or str(d)), "month": _month_key(rows)}[query.dimension]
    amounts = (-rows["cents"] if flow == "expense" else rows["cents"]).groupby(keys).sum()
    counts = rows.groupby(keys).size()
    ranked = sorted(amounts.items(), key=lambda item: (-item[1], item[0]) if query.direction == "largest" else (item[1], item[0]))
    if not ranked:
        return _answer(ctx, "You have no such transactions.", {}, rows)
    label = {"category": "category", "merchant": "merchant" if flow == "expense" else "payer", "month": "month"}[query.dimension]
    verb = "spent" if flow == "expense" else "received"
    name = lambda key: pd.Timestamp(key + "-01").strftime("%B %Y") if query.dimension == "month" else key  # noqa: E731
    top_key, top_cents = ranked[0]
    most = "most" if query.direction == "largest" else "least"
    where = _subject_text(scope, flow) + _period_text(scope)
    if label == "payer":
        within = f"Within {', '.join(s.label for s in scope.subjects)}, the" if scope.subjects else "The"
        text = f"{within} payer you received the {most} from{_period_text(scope)} was {name(top_key)}: {ctx.money(int(top_cents))} ({_count_text(int(counts[top_key]))})."
    else:
        text = f"The {label} where you {verb} the {most}{where} was {name(top_key)}: {ctx.money(int(top_cents))} ({_count_text(int(counts[top_key]))})."
    shown = ranked[: query.n if query.n > 1 else 5]
    if len(ranked) > 1:
        lines = [f"| {label.title()} | {'Spent' if flow == 'expense' else 'Received'} | Transactions |", "|---|---:|---:|"]
        lines += [f"| {name(key)} | {ctx.money(int(cents))} | {int(counts[key])} |" for key, cents in shown]
        text += "\n\n" + "\n".join(lines)
    figures = {"by_" + query.dimension: {str(key): int(cents) / 100 for key, cents in ranked}}
    return _answer(ctx, text, figures, rows)


def _summary(ctx: _Context) -> TransactionAnswer:
    scope = ctx.query.scope
    rows = select(ctx.table, replace(scope, flow=None))
    if not len(rows):
        return _answer(ctx, f"You have no transactions{_period_text(scope)}.", {}, rows)
    income, spent = _received(rows), _spent(rows)
    first, last = rows["date"].min().date().isoformat(), rows["date"].max().date().isoformat()
    subjects = ", ".join(subject.label for subject in scope.subjects)
    lines = [f"**Financial summary{' for ' + subjects if subjects else ''}{_period_text(scope)}** ({first} to {last}, {_count_text(len(rows))})", ""]
    lines.append(f"Income {ctx.money(income)} · Expenses {ctx.money(spent)} · Net {ctx.money(income - spent)}")
    figures: dict[str, Any] = {"income": income / 100, "expenses": spent / 100, "net": (income - spent) / 100}
    expense = rows["type"] == EXPENSE
    if ctx.query.dimension in ("", "category") and ctx.table.has_category:
        spent_by = (-rows["cents"].where(expense, 0)).groupby(rows["category"]).sum()
        got_by = rows["cents"].where(~expense, 0).groupby(rows["category"]).sum()
        counts = rows.groupby("category").size()
        order = sorted(counts.index, key=lambda c: (-int(spent_by[c]), -int(got_by[c]), c))
        lines += ["", "| Category | Expenses | Income | Transactions |", "|---|---:|---:|---:|"]
        lines += [f"| {c} | {ctx.money(int(spent_by[c]))} | {ctx.money(int(got_by[c]))} | {int(counts[c])} |" for c in order]
        figures["by_category"] = {c: {"expenses": int(spent_by[c]) / 100, "income": int(got_by[c]) / 100, "count": int(counts[c])} for c in order}
    if ctx.query.dimension in ("", "month"):
        month = _month_key(rows)
        spent_by = (-rows["cents"].where(expense, 0)).groupby(month).sum()
        got_by = rows["cents"].where(~expense, 0).groupby(month).sum()
        lines += ["", "| Month | Income | Expenses | Net |", "|---|---:|---:|---:|"]
        lines += [f"| {m} | {ctx.money(int(got_by[m]))} | {ctx.money(int(spent_by[m]))} | {ctx.money(int(got_by[m] - spent_by[m]))} |" for m in sorted(spent_by.index)]
        figures["by_month"] = {m: {"income": int(got_by[m]) / 100, "expenses": int(spent_by[m]) / 100, "net": int(got_by[m] - spent_by[m]) / 100} for m in sorted(spent_by.index)}
    return _answer(ctx, "\n".join(lines), figures, rows)


def _compare(ctx: _Context) -> TransactionAnswer:
    query = ctx.query
    assert query.sides is not None
    first, second = query.sides
    if first.flow != second.flow:  # income against expenses
        rows = select(ctx.table, replace(query.scope, flow=None))
        income, spent = _received(rows), _spent(rows)
        where = _period_text(query.scope) + _subject_text(query.scope, "expense")
        relation = "more than" if income > spent else "less than" if income < spent else "the same as"
        text = f"Your income{where} ({ctx.money(income)}) was {relation} your expenses ({ctx.money(spent)}): net {ctx.money(income - spent)}."
        return _answer(ctx, text, {"income": income / 100, "expenses": spent / 100, "net": (income - spent) / 100}, rows)
    flow = _flow_of(ctx, first)
    amounts, frames = [], []
    for side in (first, second):
        rows = select(ctx.table, replace(side, flow=flow))
        frames.append(rows)
        amounts.append(_spent(rows) if flow == "expense" else _received(rows))
    by_period = len(query.scope.periods) >= 2
    labels = [(_period_text(side) if by_period else _subject_text(side, flow)).strip() for side in (first, second)]
    common = _subject_text(query.scope, flow) if by_period else _period_text(query.scope)
    verb = "spent" if flow == "expense" else "received"
    if amounts[0] == amounts[1]:
        text = f"You {verb} the same{common} {labels[0]} and {labels[1]}: {ctx.money(amounts[0])} each."
    else:
        big, small = (0, 1) if amounts[0] > amounts[1] else (1, 0)
        if by_period:
            text = f"You {verb} more{common} {labels[big]} ({ctx.money(amounts[big])}) than {labels[small]} ({ctx.money(amounts[small])}), a difference of {ctx.money(amounts[big] - amounts[small])}."
        else:
            text = f"You {verb} more {labels[big]}{common} ({ctx.money(amounts[big])}) than {labels[small]} ({ctx.money(amounts[small])}), a difference of {ctx.money(amounts[big] - amounts[small])}."
    sides = [{"label": label, "amount": amount / 100, "count": int(len(rows))} for label, amount, rows in zip(labels, amounts, frames)]
    return _answer(ctx, text, {"sides": sides, "difference": abs(amounts[0] - amounts[1]) / 100}, pd.concat(frames))


def _unsupported(ctx: _Context, reason: str) -> TransactionAnswer:
    text = f"I can't answer that from your transactions: {reason}. I can answer: {CAN_ANSWER}."
    return TransactionAnswer(answer=text, data={"kind": "unsupported", "reason": reason, "figures": {}}, kind="unsupported")


def _no_match(ctx: _Context) -> TransactionAnswer:
    unknown = ctx.query.unknown
    vocabulary = ctx.table.vocabulary
    closest = vocabulary.closest(unknown)
    text = f'You have no transactions matching "{unknown}": no category or description in your data mentions it.'
    if closest:
        text += f" Closest matches: {', '.join(closest)}."
    if vocabulary.categories:
        text += f" Categories in your data: {', '.join(vocabulary.categories)}."
    return TransactionAnswer(answer=text, data={"kind": "no_match", "unknown": unknown, "closest": closest, "figures": {"count": 0}, "rows": []}, kind="no_match")


_HANDLERS = {
    "total": _total,
    "extreme": _extreme,
    "top": _top,
    "average_monthly": _average_monthly,
    "average": _average,
    "count": _count,
    "latest": _latest,
    "earliest": _latest,
    "list": _list,
    "ranking": _ranking,
    "summary": _summary,
    "compare": _compare,
}


def answer_query(table: TransactionsTable, query: Query) -> TransactionAnswer:
    """Compute and word one parsed query."""
    ctx = _Context(table, query)
    if query.kind == "unsupported":
        return _unsupported(ctx, query.reason)
    if query.kind == "no_match":
        return _no_match(ctx)
    return _HANDLERS[query.kind](ctx)


def answer_question(table: TransactionsTable, question: str, *, routed: bool | None = None) -> TransactionAnswer | None:
    """The exact answer, or None when the question is not about the transactions (ask the model).

    `routed=True` skips the router (the caller already decided); the default asks `route`.
    """
    if routed is None:
        routed = route(table, question)
    if not routed:
        return None
    query = parse_question(table, question)
    answer = answer_query(table, query)
    logger.info("transactions answer (%s) for %r", answer.kind, question)
    return answer
