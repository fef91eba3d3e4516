"""What a batch job costs the people at the chat, and what running requests as a batch job costs the job.

    uv run python bench/batch_bench.py              # a 128-request job x 64 tokens; 12 interactive probes
    uv run python bench/batch_bench.py --quick      # a 48-request job x 32 tokens; 6 probes
    uv run python bench/batch_bench.py --write      # also append to docs/benchmarks.md

labs-api runs as a subprocess with automatic settings on the embedded default model. Measured, in order:
1. idle: the time to first token of interactive chat requests (streamed, 16 tokens) sent one after the
   other: the floor;
2. the same probes while a batch job (the OpenAI Batch API: /v1/files + /v1/batches) of N greedy chat
   requests runs: batch lines run at batch priority, so a probe takes a running place from the job
   instead of waiting for one;
3. the job's throughput (generated tokens over the time from create to completed) against the same N
   requests sent directly over HTTP, all at once (the job also sends up to max_num_seqs at a time):
   what the file, the job's bookkeeping and the in-process dispatch cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402

import report  # noqa: E402
from machine import OtherLoad, describe_machine  # noqa: E402
from serve_peer import ServerProcess, free_port  # noqa: E402
from workload import chat_messages, workload_questions  # noqa: E402

console = Console() if sys.stdout.isatty() else Console(width=160)
PROBE_TOKENS = 16


class LabsServer(ServerProcess):
    name = "labs-api"

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LABS_HOME": str(home), "LABS_PRELOAD_ON_START": "true", "LABS_EMBEDDING_LOAD_ON_START": "false"}
        super().__init__([str(Path(sys.executable).with_name("labs-api")), "--host", "127.0.0.1", "--port", str(self.port)], env=env)


async def probe(client: httpx.AsyncClient, question: str) -> float:
    """Seconds to the first streamed token of one interactive request."""
    body = {"messages": chat_messages(question), "max_tokens": PROBE_TOKENS, "temperature": 0, "stream": True}
    started = time.perf_counter()
    first = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: ") and '"content"' in line:
                first = time.perf_counter() - started
    assert first is not None, "no token came back"
    return first


async def probes(client: httpx.AsyncClient, count: int, while_running: asyncio.Event | None = None) -> list[float]:
    questions = workload_questions(count)
    times = []
    for question in questions:
        if while_running is not None and not while_running.is_set():
            break  # the job ended: later probes would measure an idle server
        times.append(await probe(client, question))
        await asyncio.sleep(0.3)
    return times


def job_lines(count: int, tokens: int) -> list[dict[str, object]]:
    return [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": chat_messages(q), "max_tokens": tokens, "temperature": 0, "ignore_eos": True}}
            for i, q in enumerate(workload_questions(count))]


async def run_job(client: httpx.AsyncClient, lines: list[dict[str, object]], running: asyncio.Event) -> tuple[float, int]:
    """Upload, create, wait: (seconds from create to completed, generated tokens)."""
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    uploaded = (await client.post("/v1/files", files={"file": ("job.jsonl", data)}, data={"purpose": "batch"})).json()
    started = time.perf_counter()
    batch = (await client.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions",
                                                     "completion_window": "24h"})).json()
    in_progress_since = None
    while batch["status"] not in ("completed", "failed", "cancelled"):
        await asyncio.sleep(0.05)
        batch = (await client.get(f"/v1/batches/{batch['id']}")).json()
        if batch["status"] == "in_progress":  # probes start once its requests are all running
            in_progress_since = in_progress_since or time.perf_counter()
            if time.perf_counter() - in_progress_since > 1.0:
                running.set()
    running.clear()
    seconds = time.perf_counter() - started
    if batch["status"] != "completed" or batch["request_counts"]["failed"]:
        raise RuntimeError(f"the batch job did not complete cleanly: {batch}")
    return seconds, batch["usage"]["output_tokens"]


async def direct(client: httpx.AsyncClient, lines: list[dict[str, object]]) -> tuple[float, int]:
    started = time.perf_counter()
    answers = await asyncio.gather(*(client.post("/v1/chat/completions", json=line["body"]) for line in lines))
    seconds = time.perf_counter() - started
    return seconds, sum(answer.json()["usage"]["completion_tokens"] for answer in answers)


async def measure(server: LabsServer, jobs: int, tokens: int, probe_count: int) -> dict[str, object]:
    limits = httpx.Limits(max_connections=jobs + 8)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=None, limits=limits) as client:
        await probes(client, 2)  # warm up
        idle = await probes(client, probe_count)
        lines = job_lines(jobs, tokens)
        direct_seconds, direct_tokens = await direct(client, lines)
        running = asyncio.Event()
        job = asyncio.create_task(run_job(client, lines, running))
        await running.wait()
        busy = await probes(client, probe_count, while_running=running)
        job_seconds, job_tokens = await job
        idle_after = await probes(client, probe_count)
    return {"idle": idle, "busy": busy, "idle_after": idle_after, "direct": (direct_seconds, direct_tokens),
            "job": (job_seconds, job_tokens)}


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    args = parser.parse_args()
    jobs, tokens, probe_count = (48, 32, 6) if args.quick else (128, 64, 12)
    machine = describe_machine(REPO)
    with tempfile.TemporaryDirectory(prefix="labs-batch-bench-") as home, LabsServer(Path(home)) as server:
        other = OtherLoad([os.getpid(), server.pid])
        results = asyncio.run(measure(server, jobs, tokens, probe_count))
        machine["other load"] = f"{other.cores():.2f} cores used by other processes during the run"
    idle, busy, after = results["idle"], results["busy"], results["idle_after"]
    (d_s, d_tok), (j_s, j_tok) = results["direct"], results["job"]
    ttft = report.Table("Interactive time to first token (streamed chat, 16 tokens)", ["when", "probes", "p50 s", "p95 s", "max s"], left=1)
    for label, values in (("idle", idle), (f"during a {jobs}-request batch job", busy), ("idle, after the job", after)):
        ttft.rows.append([label, str(len(values)), f"{statistics.median(values):.3f}", f"{p(values, 0.95):.3f}", f"{max(values):.3f}"])
    throughput = report.Table(f"{jobs} greedy chat requests x {tokens} tokens", ["how", "seconds", "generated tokens", "tok/s"], left=1)
    throughput.rows.append(["sent directly, all at once", f"{d_s:.1f}", str(d_tok), f"{d_tok / d_s:.1f}"])
    throughput.rows.append(["as a batch job (create to completed, with probes)", f"{j_s:.1f}", str(j_tok), f"{j_tok / j_s:.1f}"])
    notes = [f"batch job ÷ direct throughput = {(j_tok / j_s) / (d_tok / d_s):.2f}x (the job also served the probes)",
             f"TTFT p50 during the job ÷ idle = {statistics.median(busy) / statistics.median(idle):.2f}x"]
    for table in (ttft, throughput):
        table.print(console)
    for note in notes:
        console.print(note)
    if args.write:
        report.append_section(REPO / "docs" / "benchmarks.md", "Batch jobs beside interactive requests", machine,
                              f"{jobs}-request batch job x {tokens} tokens, {probe_count} interactive probes", [ttft, throughput], notes)


if __name__ == "__main__":
    main()
