"""labs on Ray Serve: throughput with 1 and N replicas, and how often a second turn finds its prefix cached.

    uv run python bench/ray_serve_bench.py --replicas 1 --replicas 2 --concurrency 4

Each configuration starts its own local Ray, deploys labs.rayserve.app with the default model and the
given router (prefix affinity, or Serve's default power of two choices with --router pow2), then:
throughput: `requests` greedy chat requests of `max-tokens` tokens, `concurrency` at a time (distinct
conversations), generated tokens / wall time; affinity: `conversations` two-turn chats, the share whose
second turn went to the first turn's replica, and their mean cached_tokens.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from labs.config import load_settings  # noqa: E402
from labs.rayserve.app import ROUTER, build_app  # noqa: E402

POW2 = "ray.serve._private.request_router.pow_2_router.PowerOfTwoChoicesRequestRouter"
SYSTEM = "You are a helpful assistant for a small bakery. Answer in two or three sentences."


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _chat(base: str, messages: list[dict], max_tokens: int) -> tuple[str, dict]:
    response = httpx.post(f"{base}/v1/chat/completions", timeout=300,
                          json={"messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
    response.raise_for_status()
    return response.headers["x-labs-replica"], response.json()


def _turn(i: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tell me about bread number {i}."}]


def run(replicas: int, router: str, args: argparse.Namespace) -> dict:
    port = _port()
    env = {name: value for name, value in os.environ.items() if name.startswith("LABS_")}
    env |= {"LABS_PRELOAD_ON_START": "true", "LABS_EMBEDDING_LOAD_ON_START": "false", "LABS_PORT": str(port),
            "LABS_RAY_REPLICAS": str(replicas), "LABS_RAY_REPLICA_CPUS": "1", "LABS_CPU_THREADS": "1"}
    settings = load_settings({}, environ=env)
    temp = tempfile.mkdtemp(prefix="labs-ray-bench-")
    ray.init(num_cpus=max(2, replicas), include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings, env, router=router), name="labs", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        _chat(base, _turn(-1), 4)  # warm-up
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            answers = list(pool.map(lambda i: _chat(base, _turn(i), args.max_tokens), range(args.requests)))
        elapsed = time.perf_counter() - started
        tokens = sum(body["usage"]["completion_tokens"] for _, body in answers)

        def converse(i: int) -> tuple[bool, int]:
            first = _turn(1000 + i)
            replica1, body = _chat(base, first, 16)
            second = [*first, body["choices"][0]["message"], {"role": "user", "content": "And the next one?"}]
            replica2, body = _chat(base, second, 16)
            return replica1, replica2, body["usage"]["prompt_tokens_details"]["cached_tokens"]

        with ThreadPoolExecutor(args.concurrency) as pool:
            turns = list(pool.map(converse, range(args.conversations)))
        return {"replicas": replicas, "router": "affinity" if router == ROUTER else "pow2",
                "tok_s": tokens / elapsed, "spread": len({r for r, _ in answers}),
                "same_replica": sum(r1 == r2 for r1, r2, _ in turns) / len(turns),
                "first_turns": sorted(Counter(r1 for r1, _, _ in turns).values(), reverse=True),
                "cached_mean": statistics.mean(cached for _, _, cached in turns)}
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, action="append")
    parser.add_argument("--router", choices=["affinity", "pow2"], action="append")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--conversations", type=int, default=16)
    args = parser.parse_args()
    for router in args.router or ["affinity"]:
        for replicas in args.replicas or [1, 2]:
            result = run(replicas, ROUTER if router == "affinity" else POW2, args)
            print(f"replicas={result['replicas']} router={result['router']} tok/s={result['tok_s']:.1f} "
                  f"replicas_used={result['spread']} second_turn_same_replica={result['same_replica']:.0%} "
                  f"cached_tokens_mean={result['cached_mean']:.1f} first_turns_per_replica={result['first_turns']}", flush=True)


if __name__ == "__main__":
    main()
