"""Generate data/all_transactions.csv: a synthetic year (2024) of a small business's transactions.

Deterministic on purpose (fixed seed, integer cents, no clock, "\\n" line endings), so tests
can regenerate the file and compare bytes, and answers quoted in docs stay true.

    uv run python scripts/make_transactions.py [--output PATH] [--seed N]
"""

from __future__ import annotations

import argparse
import calendar
import csv
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

YEAR = 2024
DEFAULT_SEED = 2024
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "data" / "all_transactions.csv"
HEADER = ["Date", "Description", "Amount", "Type", "Category"]


@dataclass(frozen=True)
class Row:
    """One transaction; amount in integer cents (negative = expense) so no float rounding."""

    day: date
    description: str
    cents: int
    category: str


def _day(rng: random.Random, month: int, first: int = 1, last: int | None = None) -> date:
    days = calendar.monthrange(YEAR, month)[1]
    return date(YEAR, month, rng.randint(first, min(last or days, days)))


def _cents(rng: random.Random, low: float, high: float) -> int:
    return rng.randint(round(low * 100), round(high * 100))


def _subscriptions(rng: random.Random) -> list[Row]:
    monthly = [
        (3, "Microsoft 365 Business Standard", 2500, "Software"),
        (5, "Adobe Creative Cloud All Apps", 5999, "Software"),
        (8, "Slack Pro subscription", 875, "Software"),
        (11, "Zoom Workplace Pro", 1333, "Software"),
        (14, "GitHub Team - 3 seats", 1200, "Software"),
        (17, "Dropbox Business Plus", 1500, "Software"),
        (20, "Google Workspace Business Starter", 720, "Software"),
        (22, "Notion Plus", 1000, "Software"),
        (25, "Intuit QuickBooks Online", 3500, "Software"),
        (1, "Verizon Wireless - business line", 8540, "Utilities"),
        (9, "Comcast Business Internet", 10999, "Utilities"),
        (28, "Chase Business Checking monthly fee", 1500, "Bank Fees"),
        (12, "Geico Auto Insurance", 14267, "Vehicle"),
        (15, "Mister Car Wash membership", 2499, "Vehicle"),
    ]
    rows = [Row(date(YEAR, m, d), text, -cents, cat) for m in range(1, 13) for d, text, cents, cat in monthly]
    for month in range(1, 13):
        rows.append(Row(date(YEAR, month, 2), "Amazon Web Services (AWS)", -_cents(rng, 38, 164), "Software"))
        rows.append(Row(_day(rng, month, 3, 26), "Google Ads", -_cents(rng, 80, 310), "Advertising"))
        if month % 2 == 0:
            rows.append(Row(_day(rng, month), "Meta Ads - Facebook campaign", -_cents(rng, 45, 180), "Advertising"))
    annual = [
        (date(YEAR, 2, 6), "1Password Teams annual plan", 23940, "Software"),
        (date(YEAR, 4, 18), "JetBrains All Products Pack annual", 28900, "Software"),
        (date(YEAR, 9, 3), "Canva Pro annual", 11999, "Software"),
        (date(YEAR, 7, 30), "DMV Vehicle Registration renewal", 9650, "Vehicle"),
        (date(YEAR, 3, 21), "LegalZoom - annual report filing", 29900, "Professional Services"),
    ]
    rows += [Row(day, text, -cents, cat) for day, text, cents, cat in annual]
    for month in (1, 4, 7, 10):
        rows.append(Row(date(YEAR, month, 10), "Smith & Lee CPA - quarterly bookkeeping", -45000, "Professional Services"))
    for month in (2, 6, 11):
        rows.append(Row(_day(rng, month), "Upwork - freelance designer", -_cents(rng, 180, 640), "Professional Services"))
    return rows


def _hardware(rng: random.Random) -> list[Row]:
    items = [
        (date(YEAR, 1, 16), "Apple Store - MacBook Pro 14in", 199900),
        (date(YEAR, 2, 27), "Best Buy - Samsung 27in monitor", 27999),
        (date(YEAR, 3, 8), "Amazon.com - Logitech MX Master 3S mouse", 9999),
        (date(YEAR, 4, 29), "Newegg - Samsung T7 SSD 2TB", 16999),
        (date(YEAR, 5, 14), "Dell Technologies - Precision 3680 workstation", 184900),
        (date(YEAR, 6, 19), "Best Buy - Brother HL-L2350DW printer", 13999),
        (date(YEAR, 7, 9), "Apple Store - iPad Air", 59900),
        (date(YEAR, 8, 22), "Amazon.com - Anker USB-C hub", 4999),
        (date(YEAR, 9, 12), "Newegg - Synology DS923+ NAS", 59999),
        (date(YEAR, 10, 7), "B&H Photo - Sony ZV-1 camera", 74800),
        (date(YEAR, 11, 29), "Best Buy - Keychron K8 keyboard", 9999),
        (date(YEAR, 12, 6), "Newegg - Neptune HX100G power supply", 129583),
    ]
    return [Row(day, text, -cents, "Hardware") for day, text, cents in items]


def _fuel(rng: random.Random) -> list[Row]:
    stations = ["Shell #4471", "Chevron #0212", "BP #8803", "ExxonMobil #3350", "Costco Gas #1127", "Circle K #6645"]
    rows = []
    day = date(YEAR, 1, 2)
    while day.year == YEAR:
        rows.append(Row(day, rng.choice(stations), -_cents(rng, 32, 78), "Fuel"))
        day += timedelta(days=rng.randint(4, 8))
    return rows


def _office(rng: random.Random) -> list[Row]:
    shops = [
        ("Staples #1182", ["printer paper", "toner cartridge", "notebooks and pens", "shipping supplies"]),
        ("Office Depot #2231", ["file folders", "desk organizer", "label maker tape", "whiteboard markers"]),
        ("Amazon.com", ["printer ink", "cable organizers", "sticky notes", "desk lamp"]),
    ]
    rows = []
    for month in range(1, 13):
        for _ in range(rng.randint(3, 5)):
            shop, things = rng.choice(shops)
            rows.append(Row(_day(rng, month), f"{shop} - {rng.choice(things)}", -_cents(rng, 7, 165), "Office Supplies"))
    return rows


def _vehicle(rng: random.Random) -> list[Row]:
    rows = [Row(date(YEAR, m, rng.randint(5, 24)), "Jiffy Lube - oil change", -_cents(rng, 69, 95), "Vehicle") for m in (2, 5, 8, 11)]
    rows.append(Row(date(YEAR, 10, 19), "Firestone Complete Auto Care - 4 tires", -68432, "Vehicle"))
    for month in (3, 6, 9, 12):
        rows.append(Row(_day(rng, month), "AutoZone - wiper blades and fluids", -_cents(rng, 18, 62), "Vehicle"))
    for month in range(1, 13):
        for _ in range(rng.randint(1, 3)):
            rows.append(Row(_day(rng, month), "ParkMobile parking", -_cents(rng, 4, 26), "Vehicle"))
    return rows


def _travel_and_meals(rng: random.Random) -> list[Row]:
    airlines = ["Delta Air Lines", "United Airlines", "Southwest Airlines", "American Airlines"]
    hotels = ["Marriott Hotel", "Hilton Hotel", "Hyatt Regency"]
    cities = ["Chicago", "New York", "Denver", "Seattle", "Atlanta", "Boston", "San Francisco", "Nashville"]
    rows = []
    for month in (1, 3, 4, 5, 6, 8, 9, 10, 11):
        start = _day(rng, month, 3, 22)
        nights = rng.randint(2, 4)
        city = rng.choice(cities)
        rows.append(Row(start - timedelta(days=rng.randint(10, 30)), f"{rng.choice(airlines)} - flight to {city}", -_cents(rng, 240, 680), "Travel"))
        rows.append(Row(start + timedelta(days=nights), f"{rng.choice(hotels)} {city} - {nights} nights", -nights * _cents(rng, 155, 265), "Travel"))
        for offset in range(rng.randint(2, 4)):
            ride = rng.choice(["Uber trip", "Lyft ride"])
            rows.append(Row(start + timedelta(days=min(offset, nights)), ride, -_cents(rng, 14, 58), "Travel"))
        if rng.random() < 0.5:
            rows.append(Row(start + timedelta(days=nights), f"Hertz car rental - {city}", -_cents(rng, 160, 340), "Travel"))
        for offset in range(nights):
            rows.append(Row(start + timedelta(days=offset), f"Dinner in {city} - client meeting", -_cents(rng, 38, 145), "Meals"))
    places = ["Starbucks", "Chipotle", "Panera Bread", "Sweetgreen", "Blue Bottle Coffee"]
    for month in range(1, 13):
        for _ in range(rng.randint(8, 12)):
            rows.append(Row(_day(rng, month), rng.choice(places), -_cents(rng, 5, 42), "Meals"))
    return rows


def _income(rng: random.Random) -> list[Row]:
    clients = ["Acme Corp", "Globex Inc", "Initech LLC", "Umbrella Health", "Stark Design Co", "Wayne Logistics"]
    rows = []
    invoice = 1040
    for month in range(1, 13):
        for _ in range(rng.randint(3, 5)):
            invoice += 1
            rows.append(Row(_day(rng, month), f"Payment from {rng.choice(clients)} - Invoice INV-{invoice}", _cents(rng, 1200, 7600), "Client Income"))
        rows.append(Row(_day(rng, month, 10, 20), "Stripe payout - online course sales", _cents(rng, 140, 890), "Client Income"))
    refunds = [
        (date(YEAR, 2, 9), "Refund - Amazon.com - returned desk lamp", 3499),
        (date(YEAR, 3, 30), "Refund - Delta Air Lines - cancelled flight", 31240),
        (date(YEAR, 5, 20), "Refund - Staples - damaged toner", 8999),
        (date(YEAR, 7, 16), "Refund - Best Buy - price adjustment", 2500),
        (date(YEAR, 8, 27), "Refund - Marriott Hotel - billing error", 18900),
        (date(YEAR, 10, 2), "Refund - Adobe Creative Cloud - duplicate charge", 5999),
        (date(YEAR, 12, 18), "Refund - Newegg - returned SSD", 16999),
    ]
    rows += [Row(day, text, cents, "Refunds") for day, text, cents in refunds]
    return rows


def generate(seed: int = DEFAULT_SEED) -> list[Row]:
    """All rows of the year, sorted by date (then description, for a stable order)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for part in (_subscriptions, _hardware, _fuel, _office, _vehicle, _travel_and_meals, _income):
        rows += part(rng)
    rows = [row for row in rows if row.day.year == YEAR]
    return sorted(rows, key=lambda row: (row.day, row.description, row.cents))


def _amount(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def write_csv(rows: list[Row], output: Path) -> None:
    """Write with fixed line endings and formatting so the bytes depend only on the rows."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        for row in rows:
            kind = "Expense" if row.cents < 0 else "Income"
            writer.writerow([row.day.isoformat(), row.description, _amount(row.cents), kind, row.category])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    rows = generate(args.seed)
    write_csv(rows, args.output)
    print(f"wrote {len(rows)} transactions to {args.output}")


if __name__ == "__main__":
    main()
