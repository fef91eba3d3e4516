#!/usr/bin/env bash
# Fuzz every operation of the API with schemathesis for a while; any 5xx is a failure.
#
#   scripts/fuzz_api.sh                 # 300 s against the tiny random model (SmolLM2's tokenizer)
#   FUZZ_SECONDS=60 FUZZ_MODEL=smollm2-135m-instruct scripts/fuzz_api.sh   # the embedded model
#
# The server runs from a scratch folder (its own labs.toml, LABS_HOME and document index; the model
# cache is the usual one unless FUZZ_CACHE_DIR is set) with LABS_MAX_TOKENS_LIMIT=8, so no request
# generates for long. Reports (JUnit, NDJSON) and the server log go to $FUZZ_OUT (default: a temporary
# folder, printed at the end). Exit status: schemathesis' own (0: no failure), or 3 when the server
# logged an internal error that no response showed.
# One worker by default: with two, schemathesis' coverage phase can trip over a CPython 3.11 bug
# ("AST constructor recursion depth mismatch", from threads parsing source at once).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"
SECONDS_BUDGET="${FUZZ_SECONDS:-300}"
MODEL="${FUZZ_MODEL:-tiny}"
OUT="${FUZZ_OUT:-$(mktemp -d -t labs-fuzz.XXXXXX)}"
mkdir -p "$OUT/home"
: > "$OUT/labs.toml"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
export LABS_CONFIG="$OUT/labs.toml" LABS_HOME="$OUT/home"
[[ -z "${FUZZ_CACHE_DIR:-}" ]] || export LABS_CACHE_DIR="$FUZZ_CACHE_DIR"  # default: the usual cache (converted models)

if [[ "$MODEL" == "tiny" ]]; then
  # A 2-layer Llama with random weights: answers in milliseconds, same tokenizer and template as SmolLM2.
  MODEL="$OUT/tiny-model"
  uv run python - "$MODEL" <<'EOF'
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from labs.models.embedded import embedded_chat_model_file
from labs.models.gguf_cache import ensure_converted
from labs.config import load_settings

cache = load_settings({}).paths.cache_dir
tokenizer = AutoTokenizer.from_pretrained(ensure_converted(embedded_chat_model_file("smollm2-135m-instruct"), cache))
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
torch.manual_seed(0)
LlamaForCausalLM(config).eval().save_pretrained(Path(sys.argv[1]))
tokenizer.save_pretrained(Path(sys.argv[1]))
EOF
fi

PORT="$(uv run python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LABS_MODEL="$MODEL" LABS_PORT="$PORT" LABS_HOST=127.0.0.1 LABS_PRELOAD_ON_START=true LABS_MODEL_IDLE_TTL=0 \
  LABS_MAX_TOKENS_LIMIT=8 LABS_MAX_N=2 LABS_MAX_INPUT_CHARS=4000 LABS_MAX_BODY_SIZE=256KiB LABS_MAX_LOADED_MODELS=1 \
  LABS_KV_CACHE_MEMORY=128MiB LABS_TRANSACTIONS_CSV="$PWD/data/all_transactions.csv" \
  uv run labs-api --log-level warning > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT

for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/server.log"; echo "labs-api did not start" >&2; exit 2; }
  sleep 1
done

status=0
# run from $OUT: schemathesis keeps its example database and crash cache in ./.schemathesis
(cd "$OUT" && uv run --project "$REPO" schemathesis run "http://127.0.0.1:$PORT/openapi.json" \
  --checks not_a_server_error --max-time "$SECONDS_BUDGET" --workers "${FUZZ_WORKERS:-1}" \
  --request-timeout 120 --suppress-health-check all --continue-on-failure \
  --report junit,ndjson --report-dir "$OUT") || status=$?

if grep -q "internal error\|Traceback" "$OUT/server.log"; then
  echo "the server logged internal errors (see $OUT/server.log):" >&2
  grep -A3 "internal error\|Traceback" "$OUT/server.log" | head -40 >&2
  [[ $status -ne 0 ]] || status=3
fi
echo "reports and server log: $OUT"
exit "$status"
