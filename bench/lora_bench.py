"""What serving LoRA adapters costs: a batch mixing four adapters and the base against the base alone.

    uv run python bench/lora_bench.py                 # 32 requests x 128 tokens, c = 1 and 32, two rounds
    uv run python bench/lora_bench.py --quick         # 16 requests x 32 tokens, one round
    uv run python bench/lora_bench.py --write         # also append to docs/benchmarks.md

The default model is loaded as labs loads it (the automatic dtype and int8 path on this CPU) and
given four random PEFT adapters of rank 16 on every linear layer (q, k, v, o, gate, up, down), the
shape a typical fine-tune has. One engine serves them all (max_loras = 4). The same greedy chat
prompts run twice per round, alternating: every request on the base model, then requests assigned
round-robin to base, adapter 1..4 (so 4/5 of the rows carry an adapter). The cost of the adapters is
the ratio of the two; the floor of a mixed batch is the base batch plus the adapters' extra FLOPs
(2 x rank x (in + out) per linear layer and token: 4.9 M parameters per rank-16 adapter here,
3.6% of the model's 135 M).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402

import engine_runs  # noqa: E402
import report  # noqa: E402
from engine_bench import converted_folder, encode, load_default_model, settle_native_kernels  # noqa: E402
from machine import OtherLoad, describe_machine  # noqa: E402
from workload import LoadResult, RequestTiming, chat_messages, workload_questions  # noqa: E402

console = Console() if sys.stdout.isatty() else Console(width=160)
ADAPTERS = 4
RANK = 16


def make_adapters(base_folder: Path, root: Path) -> list[Path]:
    """Four random rank-16 PEFT adapters on every linear layer of the model in `base_folder`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for index in range(ADAPTERS):
        model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
        torch.manual_seed(index)
        peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules="all-linear", init_lora_weights=False))
        folder = root / f"adapter-{index + 1}"
        peft_model.save_pretrained(folder)
        folders.append(folder)
    return folders


async def stream_one(engine: Any, prompt: list[int], params: Any, adapter: str | None) -> RequestTiming:
    timing = RequestTiming(submitted=time.perf_counter())
    async for out in engine.add_request(prompt, params, adapter=adapter):
        if out.error:
            raise RuntimeError(f"engine request failed: {out.error}")
        timing.record(len(out.new_token_ids), time.perf_counter())
    timing.finished = time.perf_counter()
    return timing


async def run_load(engine: Any, prompts: list[list[int]], adapters: list[str | None], max_tokens: int, concurrency: int,
                   label: str) -> LoadResult:
    semaphore = asyncio.Semaphore(concurrency)
    params = engine_runs.greedy(max_tokens)

    async def one(index: int) -> RequestTiming:
        async with semaphore:
            return await stream_one(engine, prompts[index], params, adapters[index % len(adapters)])

    started = time.perf_counter()
    timings = await asyncio.gather(*(one(i) for i in range(len(prompts))))
    return LoadResult(label, concurrency, list(timings), time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--write", nargs="?", const=REPO / "docs" / "benchmarks.md", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    requests, max_tokens, rounds = (16, 32, 1) if args.quick else (32, 128, 2)
    levels = [int(c) for c in args.concurrency.split(",")]
    started = time.perf_counter()
    machine = describe_machine(REPO)
    settings, loaded = load_default_model()
    machine["model"] = loaded.describe()
    machine["chosen dtype"] = loaded.placement.reason
    from labs.engine.defaults import engine_config_from_settings
    from labs.engine.engine import Engine

    prompts = encode(loaded.tokenizer, [chat_messages(q) for q in workload_questions(requests)])
    config = replace(engine_config_from_settings(settings), max_loras=ADAPTERS, max_lora_rank=RANK)
    engine = Engine(loaded.model, loaded.tokenizer, loaded.context_length, config)
    names = [f"adapter-{i + 1}" for i in range(ADAPTERS)]
    mixes: dict[str, list[str | None]] = {"base only": [None], f"base + {ADAPTERS} adapters, round-robin": [None, *names]}
    results: dict[tuple[str, int], list[LoadResult]] = {}
    try:
        with tempfile.TemporaryDirectory() as root:
            for name, folder in zip(names, make_adapters(converted_folder(loaded, settings), Path(root))):
                engine.load_adapter(name, folder).result()
            machine["adapters"] = f"{ADAPTERS} x rank {RANK} on q, k, v, o, gate, up, down ({engine.core.adapters.get(names[0]).nbytes / 2**20:.1f} MiB each as laid out)"
            machine["native kernels"] = settle_native_kernels(engine)
            machine["forward"] = "fused Llama" if engine.core.runner.fused is not None else "the model's own"
            asyncio.run(run_load(engine, prompts[:8], [None, *names], 8, 8, "warm-up"))
            for round_index in range(rounds):
                for c in levels:
                    for label, adapters in mixes.items():
                        meter = OtherLoad([os.getpid()])
                        result = asyncio.run(run_load(engine, prompts, adapters, max_tokens, c, label))
                        result.other_cores = meter.cores()
                        results.setdefault((label, c), []).append(result)
                        console.print(f"  round {round_index + 1} c={c:<2} {label:<36} {result.tokens_per_s:7.1f} tok/s  "
                                      f"TPOT p50 {result.tpot_p50 * 1000:6.1f} ms  TTFT p50 {result.ttft_p50 * 1000:6.0f} ms  "
                                      f"others {result.other_cores:.2f} cores")
    finally:
        engine.shutdown()
    elapsed = time.perf_counter() - started
    rows = []
    for c in levels:
        base = results[("base only", c)]
        for label in mixes:
            runs = results[(label, c)]
            tok = [r.tokens_per_s for r in runs]
            tpot = [r.tpot_p50 * 1000 for r in runs]
            ratio = sum(tok) / sum(r.tokens_per_s for r in base)
            rows.append([str(c), label, " / ".join(f"{t:.1f}" for t in tok), " / ".join(f"{t:.1f}" for t in tpot),
                         " / ".join(f"{r.ttft_p50 * 1000:.0f}" for r in runs), f"{ratio:.2f}x",
                         " / ".join(f"{r.other_cores:.2f}" for r in runs)])
    table = report.Table("LoRA adapters: a mixed batch against the base alone",
                         ["concurrency", "requests", "tok/s (per round)", "TPOT p50 ms", "TTFT p50 ms", "vs base only",
                          "others' CPU"], rows)
    console.print()
    table.print(console)
    console.print(f"benchmark wall time {elapsed:.0f} s")
    if args.write:
        workload = (f"{requests} greedy chat requests of {max_tokens} output tokens per run, closed-loop clients; "
                    f"{rounds} round(s), the two mixes alternating; benchmark wall time {elapsed:.0f} s")
        report.append_section(args.write, f"LoRA adapters{' (quick)' if args.quick else ''}", machine, workload, [table])
        console.print(f"appended to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
