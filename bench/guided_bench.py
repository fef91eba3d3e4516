"""The throughput cost of constrained decoding in a mixed batch of 32 (issue: structured outputs).

Three runs on the default model, in one process, each 32 concurrent requests of 96 tokens:
all unconstrained; half constrained by a JSON schema; all constrained. The schema needs more
than 96 tokens to complete (an array of at least 60 strings), so every constrained request runs
to max_tokens like the unconstrained ones (ignore_eos) and the batch stays full: the runs differ
only in the grammar work. Prints aggregate output tok/s and the ratios; `--write` appends the
table to docs/benchmarks.md.

    uv run python bench/guided_bench.py [--rounds 2] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine  # noqa: E402
from workload import chat_messages, workload_questions  # noqa: E402

from labs.config import load_settings  # noqa: E402
from labs.engine.defaults import engine_config_from_settings  # noqa: E402
from labs.engine.engine import Engine  # noqa: E402
from labs.engine.guided import GuidedDecoding  # noqa: E402
from labs.engine.sampling import SamplingParams  # noqa: E402
from labs.engine.torch_thread import torch_thread  # noqa: E402
from labs.models import load_model  # noqa: E402
from labs.models.prompting import prompt_token_ids  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCHEMA = {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 60}
BATCH = 32
MAX_TOKENS = 96


async def run(engine: Engine, prompts: list[list[int]], constrained: int) -> float:
    guided = GuidedDecoding("json_schema", json.dumps(SCHEMA))
    params = [SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True,
                             guided=guided if i < constrained else None) for i in range(BATCH)]

    async def one(prompt: list[int], p: SamplingParams) -> int:
        tokens = 0
        async for out in engine.add_request(prompt, p):
            if out.error:
                raise RuntimeError(out.error)
            tokens += len(out.new_token_ids)
        return tokens

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(prompt, p) for prompt, p in zip(prompts, params)))
    seconds = time.perf_counter() - started
    assert all(c == MAX_TOKENS for c in counts), counts
    return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="Alternating rounds; the best of each mix is kept.")
    parser.add_argument("--write", action="store_true", help="Append the results to docs/benchmarks.md.")
    args = parser.parse_args()
    machine = describe_machine(REPO)
    settings = load_settings()
    loaded = torch_thread().call(load_model, settings)
    engine = Engine(loaded.model, loaded.tokenizer, loaded.context_length, engine_config_from_settings(settings))
    prompts = [prompt_token_ids(loaded.tokenizer, messages=chat_messages(q)) for q in workload_questions(BATCH)]
    asyncio.run(run(engine, prompts[:4], 2))  # warm-up, and the grammar compiled once
    mixes = {"unconstrained": 0, "half constrained": BATCH // 2, "all constrained": BATCH}
    best = {name: 0.0 for name in mixes}
    for _ in range(args.rounds):
        for name, constrained in mixes.items():
            best[name] = max(best[name], asyncio.run(run(engine, prompts, constrained)))
    engine.shutdown()
    base = best["unconstrained"]
    lines = [f"| {name} | {rate:.1f} | {rate / base:.2f} |" for name, rate in best.items()]
    table = "\n".join(["| batch of 32 × 96 tokens | output tok/s | vs unconstrained |", "|---|---|---|", *lines])
    print(table)
    if args.write:
        section = (f"\n## Constrained decoding in a mixed batch\n\n`uv run python bench/guided_bench.py --write` on "
                   f"{machine['cpu']} ({machine['cores']}), {machine['date']}, labs {machine['labs revision']}, load "
                   f"average at start {machine['load average at start']}. Default model, fp32, greedy, a JSON schema "
                   "(array of ≥60 strings) that keeps every constrained request running to max_tokens; best of "
                   f"{args.rounds} alternating rounds.\n\n{table}\n")
        with (REPO / "docs" / "benchmarks.md").open("a") as file:
            file.write(section)


if __name__ == "__main__":
    main()
