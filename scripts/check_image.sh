#!/usr/bin/env bash
# Build the labs image from a fresh clone of this repository's HEAD and check it end to end, offline:
#
#   scripts/check_image.sh                 # clone, build, run the checks, remove the container
#   IMAGE=ai-labs:check SKIP_BUILD=1 scripts/check_image.sh   # check an image already built
#
# The container runs with --network none (so the embedded models must be in the image), a read-only
# root filesystem (as the Kubernetes manifests run it) and --stop-timeout 40. Checked: the processes
# are not root; the HEALTHCHECK turns healthy; /ready after the preload; a greedy chat answer and an
# embedding from inside the container; labs-gen in the container; `docker stop` during a request lets
# that request finish and the container exit 0. Prints the measurements as "name: value" lines and
# writes them as JSON to $RESULTS (default: ./check_image.json). Needs docker and git.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
IMAGE="${IMAGE:-ai-labs:check}"
RESULTS="${RESULTS:-$PWD/check_image.json}"
name="labs-check-$$"
work="$(mktemp -d)"
declare -A result

cleanup() {
    docker rm -f -v "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

say() { printf '%s: %s\n' "$1" "$2"; result[$1]="$2"; }
fail() { echo "FAIL: $*" >&2; docker logs --tail 60 "$name" >&2 2>&1 || true; exit 1; }
# Python inside the container (there is no network to reach it from here).
in_container() { docker exec -i "$name" python - "$@"; }

if [ -z "${SKIP_BUILD:-}" ]; then
    git clone --quiet "$repo" "$work/src"
    # CA certificates for a TLS-inspecting proxy are local files, never committed: bring them along.
    cp "$repo"/deploy/docker/certs/*.crt "$work/src/deploy/docker/certs/" 2>/dev/null || true
    started=$(date +%s)
    docker build --quiet --tag "$IMAGE" "$work/src" >/dev/null || fail "docker build"
    say build_seconds "$(( $(date +%s) - started ))"
fi
say image "$IMAGE"
say image_size_mb "$(( $(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000 ))"

started=$(date +%s.%N)
docker run -d --name "$name" --network none --read-only --tmpfs /tmp --stop-timeout 40 \
    -e LABS_PRELOAD_ON_START=true "$IMAGE" >/dev/null
for _ in $(seq 1 600); do
    status="$(docker inspect -f '{{.State.Health.Status}}' "$name")"
    [ "$status" = healthy ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || fail "the container stopped"
    sleep 0.5
done
[ "$status" = healthy ] || fail "health status $status"
say seconds_to_healthy "$(python3 -c "import time; print(round(time.time() - $started, 1))")"

# Ready: the default model is loaded (LABS_PRELOAD_ON_START loads it before /health even answers).
in_container <<'EOF' || fail "/ready"
import time, urllib.request
for _ in range(600):
    try:
        urllib.request.urlopen("http://127.0.0.1:8000/ready", timeout=5)
        break
    except Exception:
        time.sleep(0.5)
else:
    raise SystemExit("not ready")
EOF

uids="$(docker top "$name" -eo pid,uid | awk 'NR > 1 { print $2 }' | sort -u | tr '\n' ' ')"
say process_uids "$uids"
for uid in $uids; do [ "$uid" != 0 ] || fail "a process runs as root"; done
say user "$(docker exec "$name" id -un) ($(docker exec "$name" id -u))"

answer="$(in_container <<'EOF'
import json, urllib.request
body = {"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 24,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]}
request = urllib.request.Request("http://127.0.0.1:8000/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(request, timeout=120))["choices"][0]["message"]["content"].replace("\n", " "))
EOF
)" || fail "chat completion"
say chat_answer "$answer"
case "$answer" in *Paris*) ;; *) fail "the greedy answer does not name Paris: $answer" ;; esac

dimensions="$(in_container <<'EOF'
import json, urllib.request
body = {"model": "all-minilm-l6-v2", "input": ["a cat", "a feline"]}
request = urllib.request.Request("http://127.0.0.1:8000/v1/embeddings", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
print(len(json.load(urllib.request.urlopen(request, timeout=120))["data"][0]["embedding"]))
EOF
)" || fail "embeddings"
say embedding_dimensions "$dimensions"
[ "$dimensions" = 384 ] || fail "embedding of $dimensions dimensions"

gen="$(docker exec "$name" labs-gen --prompt "What is the capital of France?" --temperature 0 --max-new-tokens 24 \
       2>/dev/null | tr '\n' ' ')" || fail "labs-gen"
say labs_gen_answer "$gen"
case "$gen" in *Paris*) ;; *) fail "labs-gen does not name Paris: $gen" ;; esac

# Graceful stop: a request of 200 tokens is running when `docker stop` sends SIGTERM. It must finish
# (the client inside writes the answer to the /data volume) and the container must exit 0, not be killed.
docker exec -d "$name" python -c '
import json, urllib.request
body = {"model": "smollm2-135m-instruct", "max_tokens": 200, "ignore_eos": True, "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me a long story."}]}
request = urllib.request.Request("http://127.0.0.1:8000/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=120))
open("/data/inflight.json", "w").write(json.dumps(answer["usage"]))
'
in_container <<'EOF' || fail "the in-flight request did not start"
import time, urllib.request
for _ in range(200):
    text = urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=5).read().decode()
    if any(line.startswith("labs_requests_running{") and not line.endswith(" 0.0") for line in text.splitlines()):
        break
    time.sleep(0.05)
else:
    raise SystemExit("no request running")
EOF
started=$(date +%s.%N)
docker stop "$name" >/dev/null
say stop_seconds "$(python3 -c "import time; print(round(time.time() - $started, 1))")"
say exit_code "$(docker inspect -f '{{.State.ExitCode}}' "$name")"
[ "${result[exit_code]}" = 0 ] || fail "exit code ${result[exit_code]} after docker stop"
usage="$(docker cp "$name:/data/inflight.json" - 2>/dev/null | tar -xO)" || fail "the in-flight request got no answer"
say inflight_usage "$usage"
case "$usage" in *'"completion_tokens": 200'*) ;; *) fail "the in-flight request was cut short: $usage" ;; esac

for key in "${!result[@]}"; do printf '%s\t%s\n' "$key" "${result[$key]}"; done > "$work/results.tsv"
python3 - "$work/results.tsv" "$RESULTS" <<'EOF'
import json, sys
values = dict(line.rstrip("\n").split("\t", 1) for line in open(sys.argv[1]) if "\t" in line)
json.dump(values, open(sys.argv[2], "w"), indent=2, sort_keys=True)
EOF
echo "all checks passed ($RESULTS)"
