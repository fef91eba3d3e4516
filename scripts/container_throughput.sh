#!/usr/bin/env bash
# Tokens per second of labs-api in a container, measured from inside it (no network needed):
#
#   scripts/container_throughput.sh ai-labs --cpus=1      # extra arguments go to `docker run`
#   scripts/container_throughput.sh ai-labs               # no CPU limit
#
# The container gets a named volume (labs-throughput-data) for /data, so the converted model and the
# native kernels built on the first run are reused by the next (the first run waits for the kernels).
# For each concurrency (1 and 8 by default, CONCURRENCY="1 8") it runs ROUNDS (3) rounds of that many
# simultaneous greedy chat requests of 128 tokens (ignore_eos) and prints each round's generated
# tokens per second of wall time, then the median.
set -euo pipefail
image="${1:?usage: $0 IMAGE [docker run arguments...]}"
shift
name="labs-throughput-$$"
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
docker run -d --name "$name" --network none -v labs-throughput-data:/data -e LABS_PRELOAD_ON_START=true \
    -e LABS_NATIVE_KERNELS=on "$@" "$image" >/dev/null
docker exec -i "$name" python - "${CONCURRENCY:-1 8}" "${ROUNDS:-3}" <<'EOF'
import json, os, statistics, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

for _ in range(1200):
    try:
        urllib.request.urlopen("http://127.0.0.1:8000/ready", timeout=5)
        break
    except Exception:
        time.sleep(0.5)
else:
    raise SystemExit("not ready")
print(f"cpus visible: {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))}")


def one(i: int) -> int:
    body = {"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 128, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Tell me a story about the number {i}."}]}
    request = urllib.request.Request("http://127.0.0.1:8000/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request, timeout=600))["usage"]["completion_tokens"]


one(0)  # warm-up
for concurrency in map(int, sys.argv[1].split()):
    rates = []
    for _ in range(int(sys.argv[2])):
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            tokens = sum(pool.map(one, range(concurrency)))
        rates.append(tokens / (time.perf_counter() - started))
    print(f"concurrency {concurrency}: {' '.join(f'{r:.1f}' for r in rates)} tok/s, median {statistics.median(rates):.1f}")
EOF
docker logs "$name" 2>&1 | grep -E "native kernels|cpu_share|threads" | tail -4 || true
