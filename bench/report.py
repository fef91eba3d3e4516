"""Turn measurements into tables: printed with Rich, appended to docs/benchmarks.md as Markdown."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

from engine_runs import PrefixResult
from machine import Floors
from workload import LoadResult

ENGINE, NAIVE, SERVE, LLAMA = "labs engine", "naive generate", "transformers serve --cb", "llama-server"
ENGINE_FP32 = "labs engine fp32"  # the same engine with cpu_int8 off: what int8 weights add
ORDER = [ENGINE, ENGINE_FP32, NAIVE, SERVE, LLAMA]


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    left: int = 2  # the first `left` columns are labels (left-aligned), the rest numbers

    def print(self, console: Console) -> None:
        table = RichTable(title=self.title, title_justify="left")
        for i, header in enumerate(self.headers):
            table.add_column(header, justify="left" if i < self.left else "right")
        for row in self.rows:
            table.add_row(*row)
        console.print(table)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.headers) + " |",
                 "|" + "|".join("---" if i < self.left else "---:" for i in range(len(self.headers))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def num(x: float, digits: int = 1) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    return "—" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}×"


def results_table(results: list[LoadResult]) -> Table:
    table = Table("Throughput and latency (output tok/s = all output tokens / wall time)",
                  ["concurrency", "system", "requests", "output tokens", "wall s", "tok/s",
                   "TTFT p50 s", "TTFT p95 s", "TPOT p50 ms", "others' CPU"])
    for r in sorted(results, key=lambda r: (r.concurrency, ORDER.index(r.system))):
        table.rows.append([str(r.concurrency), r.system, str(len(r.timings)), f"{r.output_tokens:,}", num(r.wall_s),
                           num(r.tokens_per_s), num(r.ttft_p50, 3), num(r.ttft_p95, 3), num(r.tpot_p50 * 1000),
                           num(r.other_cores, 2)])
    return table


def ratios_table(results: list[LoadResult]) -> Table:
    """Engine against each peer at each concurrency; > 1 always means the engine is better."""
    table = Table("Engine vs peers (> 1× means the engine is better)",
                  ["concurrency", "tok/s engine ÷ naive", "tok/s engine ÷ serve", "tok/s engine ÷ llama-server",
                   "TTFT p50 naive ÷ engine", "TTFT p50 serve ÷ engine", "TTFT p50 llama-server ÷ engine"], left=1)
    by_key = {(r.system, r.concurrency): r for r in results}
    for c in sorted({r.concurrency for r in results}):
        engine, naive, serve, llama = (by_key.get((s, c)) for s in (ENGINE, NAIVE, SERVE, LLAMA))
        if engine is None:
            continue
        nan = math.nan
        table.rows.append([
            str(c),
            ratio(engine.tokens_per_s, naive.tokens_per_s if naive else nan),
            ratio(engine.tokens_per_s, serve.tokens_per_s if serve else nan),
            ratio(engine.tokens_per_s, llama.tokens_per_s if llama else nan),
            ratio(naive.ttft_p50 if naive else nan, engine.ttft_p50),
            ratio(serve.ttft_p50 if serve else nan, engine.ttft_p50),
            ratio(llama.ttft_p50 if llama else nan, engine.ttft_p50),
        ])
    return table


def floors_table(floors: Floors, results: list[LoadResult]) -> Table:
    engine = sorted((r for r in results if r.system == ENGINE), key=lambda r: r.concurrency)
    single = next((r for r in engine if r.concurrency == 1), None)
    best = max(engine, key=lambda r: r.tokens_per_s, default=None)
    table = Table(f"Floors for this machine ({floors.dtype} weights)",
                  ["floor", "how", "tok/s", "engine reaches"])
    table.rows.append([
        "single stream", f"{floors.weight_bytes / 1e6:,.0f} MB of weights ÷ {floors.bandwidth_gb_s:.1f} GB/s memory bandwidth",
        num(floors.single_stream_tok_s, 0),
        f"{single.tokens_per_s / floors.single_stream_tok_s:.0%} at c=1" if single else "—",
    ])
    table.rows.append([
        "batch", f"{floors.matmul_gflop_s:,.0f} G{'OP' if floors.dtype == 'int8' else 'FLOP'}/s (1024² {floors.dtype} matmul) ÷ (2 × {floors.parameters / 1e6:,.1f} M parameters)",
        num(floors.batch_tok_s, 0),
        f"{best.tokens_per_s / floors.batch_tok_s:.0%} at c={best.concurrency}" if best else "—",
    ])
    return table


def prefix_table(off: PrefixResult, on: PrefixResult) -> Table:
    table = Table(f"Prefix caching ({len(on.timings)} sequential requests, {on.prompt_tokens}-token prompts, "
                  f"{on.shared_tokens} shared)",
                  ["prefix caching", "requests", "cached prompt tokens p50", "TTFT p50 ms", "TTFT p50 off ÷ this"], left=1)
    for case in (off, on):
        table.rows.append(["on" if case.prefix_caching else "off", str(len(case.timings)),
                           num(case.cached_tokens_p50, 0), num(case.ttft_p50 * 1000), ratio(off.ttft_p50, case.ttft_p50)])
    return table


def target_lines(results: list[LoadResult]) -> list[str]:
    """Issue 3's "Done when" numbers, for information (nothing here fails a run)."""
    by_key = {(r.system, r.concurrency): r for r in results}
    lines = []
    e32, s32 = by_key.get((ENGINE, 32)), by_key.get((SERVE, 32))
    e1, n1 = by_key.get((ENGINE, 1)), by_key.get((NAIVE, 1))
    if e32:
        lines.append(f"c=32 aggregate {e32.tokens_per_s:,.0f} tok/s (target ≥ 400, goal 1,000)")
        lines.append(f"c=32 TTFT p50 {e32.ttft_p50:.2f} s (target < 1.5 s)")
    if e32 and s32:
        lines.append(f"c=32 engine ÷ transformers serve --cb = {e32.tokens_per_s / s32.tokens_per_s:.2f}× (target ≥ 4×)")
    if e1 and n1:
        lines.append(f"c=1 engine ÷ naive generate = {e1.tokens_per_s / n1.tokens_per_s:.2f}× (target ≥ 1.5×)")
    return lines


def append_section(path: Path, heading: str, machine: dict[str, str], workload: str, tables: list[Table],
                   notes: Sequence[str] = ()) -> None:
    """Append one run to docs/benchmarks.md: `## date heading`, the machine, the workload, the tables, notes."""
    lines = [f"## {machine['date']}{' ' + heading if heading else ''}", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items() if key != "date"]
    lines += [f"- workload: {workload}", ""]
    for table in tables:
        lines += [table.markdown(), ""]
    if notes:
        lines += [f"- {note}" for note in notes] + [""]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Benchmarks\n\nSee bench/engine_bench.py for the method.\n\n")
    separator = "" if path.read_text().endswith("\n\n") else "\n"  # a heading needs a blank line before it
    with path.open("a") as handle:
        handle.write(separator + "\n".join(lines) + "\n")

