"""Benchmark the labs engine against its peers on one fixed chat workload, in one run.

    uv run python bench/engine_bench.py                 # full: 64 requests x 128 tokens, c = 1, 8, 32
    uv run python bench/engine_bench.py --quick         # smoke test: 8 requests x 32 tokens, c = 1, 4
    uv run python bench/engine_bench.py --only engine,naive --concurrency 1,8
    uv run python bench/engine_bench.py --write         # also append the results to docs/benchmarks.md

What runs, in this order (one model load per system, each freed before the next):
1. labs engine, in-process: `concurrency` closed-loop asyncio clients (a semaphore), greedy,
   `ignore_eos`, exactly `max_tokens` output tokens per request. Then the prefix-caching section:
   16 sequential requests sharing a ~400-token system prompt, on a fresh engine with prefix
   caching off and one with it on (skip with --no-prefix, or run alone with --only prefix).
2. naive `model.generate`, batch 1, one request at a time, `min_new_tokens = max_new_tokens`.
   Measured once sequentially; its tok/s is the same at every concurrency, and its TTFT at c > 1
   is simulated from the measured service times as c clients queued in front of it (see naive.py).
3. `transformers serve --continuous-batching` as a subprocess on a free port, same converted
   model folder, dtype and device, streamed OpenAI chat completions (EOS disabled through its
   `generation_config` field; see serve_peer.py).

How to read it: tok/s = all output tokens / wall time of the whole batch of requests (higher is
better); TTFT = time from sending a request to its first token, p50/p95 over the requests (it
includes queueing); TPOT = (last token - first token) / (tokens - 1), p50. Ratios are engine ÷
peer for tok/s and peer ÷ engine for TTFT, so > 1x always means the engine is better. The floors
are the best any implementation could do on this machine (see machine.py). On a 2-core machine,
anything else running halves the numbers: compare ratios from the same run, not absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from rich.console import Console  # noqa: E402

# All torch work (floors, loading, the engine, naive generate) runs on labs' single torch
# thread: a second OpenMP team in the process would slow every system (see torch_thread.py).
from labs.engine.torch_thread import torch_thread  # noqa: E402

import engine_runs  # noqa: E402
import llama_peer  # noqa: E402
import naive  # noqa: E402
import report  # noqa: E402
import serve_peer  # noqa: E402
from machine import Floors, OtherLoad, describe_machine, measure_floors  # noqa: E402
from workload import PREFIX_QUESTIONS, SHARED_SYSTEM_PROMPT, LoadResult, chat_messages, workload_questions  # noqa: E402

SYSTEMS = ("engine", "prefix", "engine-fp32", "naive", "serve", "llama")
console = Console() if sys.stdout.isatty() else Console(width=160)  # no wrapping in logs


@dataclass(frozen=True)
class Options:
    requests: int
    max_tokens: int
    concurrency: list[int]
    systems: set[str]
    prefix_requests: int
    prefix_max_tokens: int
    write: Path | None
    quick: bool


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 requests x 32 tokens at concurrency 1,4")
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help="comma-separated subset of engine,prefix,engine-fp32,naive,serve,llama (engine implies prefix)")
    parser.add_argument("--no-prefix", action="store_true", help="skip the prefix-caching section")
    parser.add_argument("--concurrency", help="comma-separated levels (default 1,8,32; quick 1,4)")
    parser.add_argument("--requests", type=int, help="requests per level (default 64; quick 8)")
    parser.add_argument("--max-tokens", type=int, help="output tokens per request (default 128; quick 32)")
    parser.add_argument("--write", nargs="?", const=REPO / "docs" / "benchmarks.md", type=Path, metavar="PATH",
                        help="append the results to docs/benchmarks.md (or PATH)")
    args = parser.parse_args(argv)
    systems = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := systems - set(SYSTEMS):
        parser.error(f"--only: unknown system(s) {sorted(unknown)}; choose from {','.join(SYSTEMS)}")
    if "engine" in systems:
        systems.add("prefix")
    if args.no_prefix:
        systems.discard("prefix")
    default_levels = "1,4" if args.quick else "1,8,32"
    return Options(
        requests=args.requests or (8 if args.quick else 64),
        max_tokens=args.max_tokens or (32 if args.quick else 128),
        concurrency=[int(c) for c in (args.concurrency or default_levels).split(",")],
        systems=systems,
        prefix_requests=4 if args.quick else len(PREFIX_QUESTIONS),
        prefix_max_tokens=4 if args.quick else 16,
        write=args.write,
        quick=args.quick,
    )


# ---------------------------------------------------------------------- model and prompts

def load_default_model(int8: bool = True) -> tuple[Any, Any]:
    """The default model as labs loads it (int8 = the configured cpu_int8), or in its plain dtype."""
    from labs.config import load_settings
    from labs.config.loader import CliValue
    from labs.models import load_model

    settings = load_settings() if int8 else load_settings({"quantization.cpu_int8": CliValue("off", "(benchmark: plain dtype)")})
    return settings, torch_thread().call(load_model, settings)


def converted_folder(loaded: Any, settings: Any) -> Path:
    from labs.models.gguf_cache import converted_folder_for

    if loaded.source.kind == "gguf":
        return converted_folder_for(loaded.source.path, settings.paths.cache_dir)
    return Path(loaded.source.path)


def encode(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[list[int]]:
    from labs.models.prompting import prompt_token_ids

    return [prompt_token_ids(tokenizer, messages=m) for m in conversations]


def release_memory() -> None:
    """Collect what the caller has just dropped (models, engines and their KV caches)."""
    gc.collect()


# ---------------------------------------------------------------------- the three systems

def run_engine(loaded: Any, settings: Any, prompts: list[list[int]], opts: Options, system: str = report.ENGINE) -> list[LoadResult]:
    from labs.engine.defaults import engine_config_from_settings
    from labs.engine.engine import Engine

    config = engine_config_from_settings(settings)
    console.print(f"[bold]{system}[/] ({loaded.describe()}) {config}")
    engine = Engine(loaded.model, loaded.tokenizer, loaded.context_length, config)
    results = []
    try:
        native = settle_native_kernels(engine)
        console.print(f"  native kernels: {native}")
        asyncio.run(engine_runs.warm_up(engine, prompts, batch=min(max(opts.concurrency), 8)))
        for c in opts.concurrency:
            meter, before = OtherLoad([os.getpid()]), engine_runs.stats_snapshot(engine)
            result = asyncio.run(engine_runs.run_load(engine, prompts, opts.max_tokens, c, system))
            result.other_cores = meter.cores()
            result.notes.append(engine_runs.stats_note(before, engine_runs.stats_snapshot(engine), result))
            result.notes.append(f"native kernels {native}")
            results.append(progress(result))
    finally:
        engine.shutdown()
    return results


def settle_native_kernels(engine: Any) -> str:
    """Finish a pending native-kernel build before anything is timed (in auto mode the engine
    would switch to them whenever the background build lands), and say which path runs."""
    native = engine.core.runner.native
    if native is None:
        return "not applicable (they serve int8 weights on CPU)"
    native.wait()
    return "used" if native.module is not None else f"not used: {native.unavailable}"


def run_prefix(loaded: Any, settings: Any, opts: Options) -> tuple[engine_runs.PrefixResult, engine_runs.PrefixResult]:
    from labs.engine.defaults import engine_config_from_settings
    from labs.engine.engine import Engine

    conversations = [chat_messages(q, SHARED_SYSTEM_PROMPT) for q in PREFIX_QUESTIONS[:opts.prefix_requests]]
    prompts = encode(loaded.tokenizer, conversations)
    warmup = encode(loaded.tokenizer, [chat_messages("Hello!", "You are a terse assistant.")])[0]
    cases = []
    for enabled in (False, True):
        config = dataclasses.replace(engine_config_from_settings(settings), enable_prefix_caching=enabled)
        engine = Engine(loaded.model, loaded.tokenizer, loaded.context_length, config)
        try:
            case = asyncio.run(engine_runs.run_prefix_case(engine, prompts, warmup, opts.prefix_max_tokens, enabled))
        finally:
            engine.shutdown()
        console.print(f"  prefix caching {'on ' if enabled else 'off'}: TTFT p50 {case.ttft_p50 * 1000:.1f} ms, "
                      f"cached prompt tokens p50 {case.cached_tokens_p50:.0f} of {case.prompt_tokens} "
                      f"({case.shared_tokens} shared)")
        cases.append(case)
        engine = None
        release_memory()
    return cases[0], cases[1]


def run_naive(model: Any, tokenizer: Any, prompts: list[list[int]], opts: Options) -> list[LoadResult]:
    console.print(f"[bold]naive generate[/] ({next(model.parameters()).dtype}, batch 1, sequential)")
    meter = OtherLoad([os.getpid()])
    measured = torch_thread().call(naive.run_sequential, model, tokenizer, prompts, opts.max_tokens)
    measured.other_cores = meter.cores()
    progress(measured)
    return [naive.simulate_concurrency(measured, c) for c in opts.concurrency]


def run_serve(folder: Path, dtype: str, device: str, conversations: list[list[dict[str, str]]], opts: Options) -> list[LoadResult]:
    console.print(f"[bold]transformers serve --continuous-batching[/] on {folder}")
    results = []
    with serve_peer.ServeProcess(folder, dtype, device) as server:
        console.print(f"  ready on {server.base_url}; warming up")
        warm = asyncio.run(serve_peer.warm_up(server, conversations[0], opts.max_tokens))
        if warm.tokens != opts.max_tokens:
            console.print(f"  [yellow]warm-up returned {warm.tokens} tokens, asked for {opts.max_tokens}[/]")
        for c in opts.concurrency:
            meter = OtherLoad([os.getpid(), server.pid])
            result = asyncio.run(serve_peer.run_load(server, conversations, opts.max_tokens, c))
            result.other_cores = meter.cores()
            results.append(progress(result))
    return results


def run_llama(gguf: Path | None, cache_dir: Path, conversations: list[list[dict[str, str]]], opts: Options,
              notes: list[str]) -> list[LoadResult]:
    """llama-server on the same model's GGUF, built on first use (skipped with a note when it cannot be)."""
    if gguf is None:
        notes.append("llama-server skipped: the model is not a GGUF file")
        return []
    binary = llama_peer.find_binary(cache_dir)
    if binary is None:
        log = cache_dir / "llama.cpp" / "build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        console.print(f"[bold]building llama-server[/] from the {llama_peer.SDIST} sdist (once; log {log})")
        try:
            binary = llama_peer.build(cache_dir, log)
        except RuntimeError as error:
            notes.append(f"llama-server skipped: it could not be built ({error})")
            return []
    console.print(f"[bold]llama-server[/] {binary} on {gguf.name}")
    results = []
    server = llama_peer.LlamaServer(binary, gguf, max(opts.concurrency), 512 + opts.max_tokens)
    try:
        server.start()
    except RuntimeError as error:
        notes.append(f"llama-server skipped: it did not start ({str(error).splitlines()[0]})")
        return []
    try:
        asyncio.run(llama_peer.run_load(server, conversations[:2], 8, 2))  # warm-up
        for c in opts.concurrency:
            meter = OtherLoad([os.getpid(), server.pid])
            result = asyncio.run(llama_peer.run_load(server, conversations, opts.max_tokens, c))
            result.other_cores = meter.cores()
            results.append(progress(result))
    finally:
        server.__exit__(*sys.exc_info())  # stops it; keeps its log only after a failure
    return results


def describe_model(loaded: Any, settings: Any, folder: Path, opts: Options) -> dict[str, str]:
    description = {"model": f"{loaded.name} ({folder.name})",
                   "dtype": str(loaded.placement.dtype).removeprefix("torch.") + (f" ({loaded.quantization} linear layers)" if loaded.quantization else ""),
                   "device": str(loaded.device)}
    if opts.systems & {"engine", "prefix"}:
        from labs.engine.defaults import engine_config_from_settings

        description["engine config"] = repr(engine_config_from_settings(settings))
    return description


def other_processes_now(seconds: float = 1.0) -> float:
    meter = OtherLoad([os.getpid()])
    time.sleep(seconds)
    return meter.cores()


def progress(result: LoadResult) -> LoadResult:
    console.print(f"  c={result.concurrency:<3} {result.tokens_per_s:8.1f} tok/s  TTFT p50 {result.ttft_p50:6.3f} s  "
                  f"wall {result.wall_s:6.1f} s  other processes {result.other_cores:.2f} cores")
    return result


# ---------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the `with` blocks stop the server and engines.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.perf_counter()
    machine = describe_machine(REPO)
    busy = other_processes_now()
    machine["other processes at start"] = f"{busy:.2f} cores busy"
    if busy > 0.1:
        console.print(f"[yellow]other processes keep {busy:.2f} cores busy: results will be noisy[/]")
    settings, loaded = load_default_model()
    folder = converted_folder(loaded, settings)
    dtype = str(loaded.placement.dtype).removeprefix("torch.")
    machine |= describe_model(loaded, settings, folder, opts)
    conversations = [chat_messages(q) for q in workload_questions(opts.requests)]
    prompts = encode(loaded.tokenizer, conversations)
    console.print(f"{opts.requests} requests x {opts.max_tokens} tokens, concurrency {opts.concurrency}, "
                  f"prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens, {loaded.describe()}")
    floors = torch_thread().call(measure_floors, loaded.model)
    results: list[LoadResult] = []
    prefix = None
    if "engine" in opts.systems:
        results += run_engine(loaded, settings, prompts, opts)
        release_memory()
    if "prefix" in opts.systems:
        prefix = run_prefix(loaded, settings, opts)
    # The peers (and the fp32 engine) get a fresh, unquantized copy of the model.
    if opts.systems & {"engine-fp32", "naive"}:
        loaded = None
        release_memory()
        settings, loaded = load_default_model(int8=False)
    if "engine-fp32" in opts.systems:
        results += run_engine(loaded, settings, prompts, opts, report.ENGINE_FP32)
        loaded = None
        release_memory()
        if "naive" in opts.systems:  # the engine swapped the model's attention: load a clean copy
            settings, loaded = load_default_model(int8=False)
    if "naive" in opts.systems:
        results += run_naive(loaded.model, loaded.tokenizer, prompts, opts)
    device = str(loaded.device) if loaded is not None else machine["device"]
    gguf = loaded.source.path if loaded is not None and loaded.source.kind == "gguf" else None
    loaded = None
    release_memory()
    if "serve" in opts.systems:
        results += run_serve(folder, dtype, device, conversations, opts)
    skipped: list[str] = []
    if "llama" in opts.systems:
        results += run_llama(gguf, settings.paths.cache_dir, conversations, opts, skipped)
    elapsed = time.perf_counter() - started
    tables = build_tables(results, floors, prefix)
    notes = skipped + collect_notes(results)
    print_report(tables, notes, elapsed)
    if opts.write:
        write_markdown(opts.write, machine, opts, tables, notes, elapsed)
        console.print(f"appended to {opts.write}")
    return 0


def build_tables(results: list[LoadResult], floors: Floors,
                 prefix: tuple[engine_runs.PrefixResult, engine_runs.PrefixResult] | None) -> list[report.Table]:
    tables = []
    if results:
        tables.append(report.results_table(results))
    if any(r.system == report.ENGINE for r in results):
        tables.append(report.ratios_table(results))
    tables.append(report.floors_table(floors, results))
    if prefix:
        tables.append(report.prefix_table(*prefix))
    return tables


def collect_notes(results: list[LoadResult]) -> list[str]:
    notes: dict[str, None] = {}
    for r in results:
        for note in r.notes:
            notes[f"{r.system}: {note}"] = None
    if results:
        notes["others' CPU: cores that other processes kept busy during that measurement (above ~0.1 the numbers are disturbed)"] = None
    return list(notes) + report.target_lines(results)


def print_report(tables: list[report.Table], notes: list[str], elapsed: float) -> None:
    console.print()
    for table in tables:
        table.print(console)
    for note in notes:
        console.print(f"- {note}")
    console.print(f"benchmark wall time {elapsed:.0f} s")


def write_markdown(path: Path, machine: dict[str, str], opts: Options, tables: list[report.Table],
                   notes: list[str], elapsed: float) -> None:
    workload = (f"{opts.requests} requests x {opts.max_tokens} output tokens, concurrency "
                f"{', '.join(map(str, opts.concurrency))}; systems: {', '.join(sorted(opts.systems))}; "
                f"benchmark wall time {elapsed:.0f} s")
    report.append_section(path, "(quick smoke run)" if opts.quick else "", machine, workload, tables, notes)


if __name__ == "__main__":
    sys.exit(main())
