"""The configuration keys: one declaration per key, shared by labs.toml, LABS_* and CLI flags.

Each key is declared once with its table, name, environment variable, parser and help text, so
the loader, `--show-config`, the sample `labs.toml` and `.env.example` cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

Parser = Callable[[Any], Any]


class ValueProblem(ValueError):
    """Raised by a parser; the loader adds which key and source the value came from."""


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueProblem(f"expected a string, got {value!r}")
    return value.strip()


def _nonempty_text(value: Any) -> str:
    text = _text(value)
    if not text:
        raise ValueProblem("must not be empty")
    return text


def _optional_text(value: Any) -> str | None:
    text = _text(value)
    return text or None


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
    raise ValueProblem(f"expected true or false, got {value!r}")


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueProblem(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueProblem(f"expected an integer, got {value!r}")


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueProblem(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise ValueProblem(f"expected a number, got {value!r}") from None
    else:
        raise ValueProblem(f"expected a number, got {value!r}")
    if result != result or result in (float("inf"), float("-inf")):
        raise ValueProblem(f"expected a finite number, got {value!r}")
    return result


def integer_at_least(low: int) -> Parser:
    def parse(value: Any) -> int:
        number = _integer(value)
        if number < low:
            raise ValueProblem(f"must be >= {low}, got {number}")
        return number

    return parse


def optional_integer_at_least(low: int) -> Parser:
    """An integer, or empty / "none" for "not set" (e.g. an unset seed)."""

    def parse(value: Any) -> int | None:
        if isinstance(value, str) and value.strip().lower() in {"", "none"}:
            return None
        return integer_at_least(low)(value)

    return parse


def number_between(low: float, high: float, *, low_open: bool = False) -> Parser:
    def parse(value: Any) -> float:
        number = _number(value)
        too_low = number <= low if low_open else number < low
        if too_low or number > high:
            bracket = "(" if low_open else "["
            raise ValueProblem(f"must be in {bracket}{low}, {high}], got {number:g}")
        return number

    return parse


def one_of(*choices: str, aliases: dict[str, str] | None = None) -> Parser:
    table = {choice: choice for choice in choices} | (aliases or {})

    def parse(value: Any) -> str:
        text = _text(value).lower()
        if text not in table:
            raise ValueProblem(f"expected one of {', '.join(choices)}, got {value!r}")
        return table[text]

    return parse


def auto_or_integer_at_least(low: int) -> Parser:
    """"auto", or an integer (a fixed count)."""

    def parse(value: Any) -> str | int:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return integer_at_least(low)(value)
        except ValueProblem as problem:
            raise ValueProblem(f'expected "auto" or an integer >= {low}, got {value!r}') from problem

    return parse


def optional_number_between(low: float, high: float) -> Parser:
    """A number in [low, high], or empty / "none" for "not set"."""

    def parse(value: Any) -> float | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none"}):
            return None
        return number_between(low, high)(value)

    return parse


def _path(value: Any) -> Path:
    return Path(_nonempty_text(value)).expanduser()


def _optional_path(value: Any) -> Path | None:
    text = _text(value)
    return Path(text).expanduser() if text else None


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


def _memory_budget(value: Any) -> str | int | float:
    """`auto`, a byte size (2GiB, 512MB, 1073741824) or a fraction of free memory (0 < f <= 1)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(digits):]
        try:
            number = float(digits)
        except ValueError:
            raise ValueProblem(f"expected auto, a size such as 2GiB or 512MB, or a fraction such as 0.8, got {value!r}") from None
    else:
        raise ValueProblem(f"expected auto, a size such as 2GiB or 512MB, or a fraction such as 0.8, got {value!r}")
    if unit not in _SIZE_UNITS:
        raise ValueProblem(f"unknown size unit {unit!r} in {value!r}: use B, KB, KiB, MB, MiB, GB or GiB")
    if number <= 0:
        raise ValueProblem(f"must be positive, got {value!r}")
    if unit == "" and number <= 1:
        return number  # a fraction of free memory
    if unit == "" and not number.is_integer():
        raise ValueProblem(f"a plain number above 1 is a byte count and must be whole, got {value!r}")
    return int(number * _SIZE_UNITS[unit])


def _size(value: Any) -> int:
    """A byte count: 4MiB, 512KB or a whole number of bytes."""
    budget = _memory_budget(value)
    if not isinstance(budget, int):
        raise ValueProblem(f"expected a size such as 4MiB or 1000000, got {value!r}")
    return budget


def _text_list(value: Any) -> tuple[str, ...]:
    """A TOML list of strings or a comma-separated string (environment variables)."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueProblem(f"expected a list of strings or a comma-separated string, got {value!r}")
    result = []
    for item in items:
        if not isinstance(item, str):
            raise ValueProblem(f"expected strings, got {item!r}")
        if item.strip():
            result.append(item.strip())
    return tuple(result)


def _port(value: Any) -> int:
    number = _integer(value)
    if not 0 <= number <= 65535:
        raise ValueProblem(f"must be a TCP port between 0 and 65535, got {number}")
    return number


_DTYPE_ALIASES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "float": "fp32",
}
DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")
COMPUTE_DTYPE_CHOICES = ("bf16", "fp16", "fp32")

@dataclass(frozen=True)
class Key:
    """One configuration key."""

    table: str
    name: str
    parse: Parser
    default: Any
    help: str
    env: str
    flag: str | None = None
    toml: bool = True  # False for keys that decide where labs.toml is (LABS_HOME, LABS_CONFIG)
    secret: bool = False  # never shown in --show-config or logs

    @property
    def dotted(self) -> str:
        return f"{self.table}.{self.name}"


def _key(table: str, name: str, parse: Parser, default: Any, help: str, *, env: str | None = None,
         flag: str | None = None, toml: bool = True, secret: bool = False) -> Key:
    return Key(table, name, parse, default, help, env or f"LABS_{name.upper()}", flag, toml, secret)


DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"

KEYS: tuple[Key, ...] = (
    # [generation]
    _key("generation", "model_name", _nonempty_text, DEFAULT_MODEL_ALIAS,
         "Model to serve: an alias from [models], a local Hugging Face folder, a .gguf file "
         "(path or folder:file.gguf), or a Hub id already in the local Hugging Face cache.",
         env="LABS_MODEL", flag="--model"),
    _key("generation", "max_new_tokens", integer_at_least(1), 256,
         "Default number of tokens to generate.", flag="--max-new-tokens"),
    _key("generation", "temperature", number_between(0.0, 2.0), 0.7,
         "Sampling temperature; 0 means greedy.", flag="--temperature"),
    _key("generation", "top_p", number_between(0.0, 1.0, low_open=True), 0.9,
         "Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.",
         flag="--top-p"),
    _key("generation", "top_k", integer_at_least(0), 0,
         "Keep only the k most likely tokens; 0 disables.", flag="--top-k"),
    _key("generation", "do_sample", _boolean, True,
         "Sample (true) or always take the most likely token (false)."),
    _key("generation", "repetition_penalty", number_between(0.0, 10.0, low_open=True), 1.0,
         "Penalty > 1 discourages repeating tokens already present; 1 disables."),
    _key("generation", "seed", optional_integer_at_least(0), None,
         "Random seed for reproducible sampling; empty for a fresh seed each run.", flag="--seed"),
    _key("generation", "device_map", one_of("auto", "cuda", "cpu", "mps"), "auto",
         "Where the model runs: auto picks CUDA when available, else MPS, else CPU."),
    _key("generation", "torch_dtype", one_of(*DTYPE_CHOICES, aliases=_DTYPE_ALIASES), "auto",
         "Weights dtype: auto picks bf16 on CUDA that supports it, else fp16 on CUDA; on CPU "
         "bf16 only where the processor has native bf16, else fp32."),
    _key("generation", "trust_remote_code", _boolean, False,
         "Allow model repositories to run their own Python code. Only for models you trust."),
    _key("generation", "use_chat_template", _boolean, True,
         "Format prompts with the tokenizer's chat template; false sends the raw prompt."),
    _key("generation", "add_generation_prompt", _boolean, True,
         "End the chat template with the assistant's turn opener."),
    _key("generation", "system_prompt", _optional_text, None,
         "System message prepended to chats that have none.", flag="--system"),
    # [quantization]
    _key("quantization", "load_in_4bit", _boolean, False,
         "Load weights in 4-bit through bitsandbytes (needs the 'quantization' extra)."),
    _key("quantization", "load_in_8bit", _boolean, False,
         "Load weights in 8-bit through bitsandbytes (needs the 'quantization' extra)."),
    _key("quantization", "cpu_int8", one_of("auto", "on", "off"), "auto",
         "Int8 weights and per-token int8 activations for the linear layers on CPU (2-4x faster "
         "matmuls, a quarter of the fp32 weight memory traffic). auto: on when the model runs on "
         "a CPU with int8 dot products (AVX512-VNNI, AVX-VNNI or AMX) and no bitsandbytes mode is set.",
         env="LABS_CPU_INT8"),
    _key("quantization", "bnb_4bit_quant_type", one_of("nf4", "fp4"), "nf4",
         "4-bit data type: nf4 (normal float, better quality) or fp4.",
         env="LABS_BNB_4BIT_QUANT_TYPE"),
    _key("quantization", "bnb_4bit_use_double_quant", _boolean, True,
         "Also quantize the 4-bit quantization constants (saves ~0.4 bit per weight).",
         env="LABS_BNB_4BIT_USE_DOUBLE_QUANT"),
    _key("quantization", "bnb_4bit_compute_dtype",
         one_of(*COMPUTE_DTYPE_CHOICES, aliases=_DTYPE_ALIASES), "bf16",
         "dtype 4-bit layers compute in.", env="LABS_BNB_4BIT_COMPUTE_DTYPE"),
    # [server]
    _key("server", "host", _nonempty_text, "127.0.0.1", "Address labs-api listens on.", flag="--host"),
    _key("server", "port", _port, 8000, "Port labs-api listens on (0 picks a free one).", flag="--port"),
    _key("server", "preload_on_start", _boolean, False,
         "Load the default model before the API accepts traffic."),
    _key("server", "api_keys", _text_list, (),
         "API keys clients must send as 'Authorization: Bearer KEY' (several: comma-separated); they have "
         "no name or limits ([keys.NAME] tables in labs.toml do). With no key here or in [keys], no key is "
         "needed. /health never needs one.", env="LABS_API_KEY", secret=True),
    _key("server", "cors_origins", _text_list, (),
         "Browser origins allowed to call the API (comma-separated, * for any). Empty: none.",
         env="LABS_CORS_ORIGINS"),
    _key("server", "allow_runtime_lora", _boolean, False,
         "Let clients load and unload LoRA adapters at run time (POST /v1/load_lora_adapter and "
         "/v1/unload_lora_adapter, naming a folder on the server). Off: only [models] adapters are served.",
         env="LABS_ALLOW_RUNTIME_LORA"),
    _key("server", "max_loaded_models", integer_at_least(1), 2,
         "Models kept in memory at once; the least recently used is unloaded to make room."),
    _key("server", "model_idle_ttl", integer_at_least(0), 900,
         "Seconds after which an idle model other than the default is unloaded; 0 keeps them.",
         env="LABS_MODEL_IDLE_TTL"),
    _key("server", "split_reasoning", _boolean, True,
         "Send a reasoning model's <think>...</think> as reasoning_content, apart from content."),
    _key("server", "max_body_size", _size, 4 * 1024**2,
         "Largest request body accepted (413 beyond it).", env="LABS_MAX_BODY_SIZE"),
    _key("server", "max_file_size", _size, 200 * 1024**2,
         "Largest file accepted by POST /v1/files (a batch job's requests); 413 beyond it.",
         env="LABS_MAX_FILE_SIZE"),
    _key("server", "max_n", integer_at_least(1), 8,
         "Most samples (n) one request may ask for."),
    _key("server", "max_tokens_limit", integer_at_least(1), 4096,
         "Most new tokens (max_tokens) one request may ask for.", env="LABS_MAX_TOKENS_LIMIT"),
    _key("server", "max_messages", integer_at_least(1), 512,
         "Most messages in one chat request."),
    _key("server", "max_input_chars", integer_at_least(1), 400_000,
         "Most characters of text in one request (prompt, messages or embedding inputs).",
         env="LABS_MAX_INPUT_CHARS"),
    _key("server", "max_embedding_inputs", integer_at_least(1), 512,
         "Most inputs in one embeddings or similarities request.",
         env="LABS_MAX_EMBEDDING_INPUTS"),
    _key("server", "shutdown_timeout", integer_at_least(0), 30,
         "Seconds SIGTERM waits for in-flight requests before stopping them.",
         env="LABS_SHUTDOWN_TIMEOUT"),
    _key("server", "log_level", one_of("critical", "error", "warning", "info", "debug"), "info",
         "How much labs-api logs.", env="LABS_LOG_LEVEL", flag="--log-level"),
    # [engine]
    _key("engine", "kv_cache_memory", _memory_budget, "auto",
         "Memory for the KV cache: a size (2GiB, 512MB), a fraction of free memory (0.8), or auto "
         "(2GiB on CPU, 0.8 of free GPU memory on CUDA).", env="LABS_KV_CACHE_MEMORY"),
    _key("engine", "max_queue", integer_at_least(1), 256,
         "Requests that may wait for a slot; past it new requests are refused as overloaded (503)."),
    _key("engine", "max_num_seqs", integer_at_least(1), 128,
         "Sequences decoded together at most."),
    _key("engine", "background_rows", integer_at_least(0), 4,
         "While interactive requests run, lower-priority work (batch jobs, keys with priority low or batch) "
         "keeps at most this many sequences running; the others pause, their cache kept, until the "
         "interactive work is done. 0 pauses it entirely.", env="LABS_BACKGROUND_ROWS"),
    _key("engine", "speculative_tokens", integer_at_least(0), 4,
         "Speculative decoding by prompt lookup: while few requests run, each step also checks up to this "
         "many tokens guessed from what followed the same words earlier in the prompt or answer, and keeps "
         "the ones the model itself would have chosen (greedy requests; the output is unchanged, only "
         "faster where answers repeat their context). 0 turns it off.", env="LABS_SPECULATIVE_TOKENS"),
    _key("engine", "max_batched_tokens", integer_at_least(16), 512,
         "Tokens per forward step (decode tokens plus prefill chunks): bounds a step's latency.",
         env="LABS_MAX_BATCHED_TOKENS"),
    _key("engine", "prefix_caching", _boolean, True,
         "Reuse the KV cache of prompt prefixes already computed (shared system prompts, chat history).",
         env="LABS_PREFIX_CACHING"),
    _key("engine", "fused_forward", _boolean, True,
         "Run Llama-family models (Llama, Mistral, Qwen2, SmolLM) through labs' fused forward, "
         "which does the same math with far fewer operations; false runs every model's own "
         "Hugging Face forward code.", env="LABS_FUSED_FORWARD"),
    _key("engine", "decode_buffer", number_between(0.0, 0.9), 0.25,
         "Share of the KV cache memory kept as a dense copy of the decoding sequences' keys and "
         "values, so decode attention reads them in place instead of gathering pages every step "
         "(when they do not fit, steps gather pages as usual). 0 turns it off.",
         env="LABS_DECODE_BUFFER"),
    _key("engine", "native_kernels", one_of("auto", "on", "off"), "auto",
         "Fused C++ kernels for the int8 CPU forward, compiled once per machine with its C++ "
         "compiler into cache_dir/native (~25 s). auto: use them once built, building in the "
         "background meanwhile (PyTorch path until then, or when no compiler is found); on: build "
         "now and fail if that is impossible; off: PyTorch only.", env="LABS_NATIVE_KERNELS"),
    _key("engine", "cpu_threads", auto_or_integer_at_least(1), "auto",
         "Threads for the model's CPU work. auto: the CPUs this process may use (affinity, cgroup quota), "
         "one fewer for each core other processes keep busy, re-checked between steps, because a "
         "thread team that shares a core with another busy process stalls at every operation; "
         "a number fixes the count.", env="LABS_CPU_THREADS"),
    _key("engine", "max_loras", integer_at_least(1), 4,
         "LoRA adapters kept in memory at once per base model (the least recently used leaves when "
         "another is needed). Memory for this many adapters of max_lora_rank is taken from the KV cache "
         "budget, only for models that have adapters.", env="LABS_MAX_LORAS"),
    _key("engine", "max_lora_rank", integer_at_least(1), 16,
         "The largest LoRA rank accepted; adapters of a higher rank are refused when loaded.",
         env="LABS_MAX_LORA_RANK"),
    # [embeddings]
    _key("embeddings", "model", _nonempty_text, "all-minilm-l6-v2",
         "Embedding model: alias, local sentence-transformers folder, or cached Hub id.",
         env="LABS_EMBEDDING_MODEL"),
    _key("embeddings", "device", one_of("auto", "cuda", "cpu", "mps"), "auto",
         "Where the embedding model runs.", env="LABS_EMBEDDING_DEVICE"),
    _key("embeddings", "batch_size", integer_at_least(1), 64,
         "Texts encoded together; concurrent requests are batched up to this many.",
         env="LABS_EMBEDDING_BATCH_SIZE"),
    _key("embeddings", "load_on_start", _boolean, True,
         "labs-api loads the embedding model in the background as it starts, so the first embedding "
         "request (or document search) does not wait for it. Off: loaded on first use.",
         env="LABS_EMBEDDING_LOAD_ON_START"),
    # [rag]
    _key("rag", "enabled", _boolean, True,
         "Answer questions about your transactions (and, when asked, your documents) from your own data; "
         "chat requests can switch it per request with use_rag.", env="LABS_RAG_ENABLED", flag="--rag"),
    _key("rag", "transactions_csv", _optional_path, Path("data/all_transactions.csv"),
         "CSV of transactions answered exactly (relative paths are from the working folder). The default is the "
         "sample shipped with labs and is skipped when absent; a path you set must exist.",
         env="LABS_TRANSACTIONS_CSV"),
    _key("rag", "currency_symbol", _text, "$",
         "Currency symbol written before amounts in transaction answers.", env="LABS_CURRENCY_SYMBOL"),
    _key("rag", "qdrant_path", _optional_path, None,
         "Folder of the local document index (Qdrant embedded mode); empty means $LABS_HOME/qdrant.",
         env="LABS_QDRANT_PATH"),
    _key("rag", "qdrant_url", _optional_text, None,
         "URL of a Qdrant server or cluster to keep the document index in instead of the local folder.",
         env="LABS_QDRANT_URL"),
    _key("rag", "qdrant_api_key", _optional_text, None,
         "API key for the Qdrant server.", env="LABS_QDRANT_API_KEY", secret=True),
    _key("rag", "collection", _nonempty_text, "labs_documents",
         "Qdrant collection holding the document chunks.", env="LABS_RAG_COLLECTION"),
    _key("rag", "top_k", integer_at_least(1), 4,
         "Document chunks retrieved per question.", env="LABS_RAG_TOP_K"),
    _key("rag", "score_threshold", optional_number_between(-1.0, 1.0), None,
         "Minimum similarity (cosine, -1..1) for a chunk to count as a source; empty keeps the top_k best.",
         env="LABS_RAG_SCORE_THRESHOLD"),
    _key("rag", "ingest_root", _optional_path, None,
         "Folder under which the API may ingest files by path (POST /v1/rag/documents with a path); "
         "empty: the API accepts uploads only.", env="LABS_RAG_INGEST_ROOT"),
    # [ray]
    _key("ray", "replicas", integer_at_least(1), 2,
         "labs-serve-ray: engine replicas at start; the fixed count unless max_replicas is above it.",
         env="LABS_RAY_REPLICAS", flag="--replicas"),
    _key("ray", "min_replicas", integer_at_least(1), 1,
         "labs-serve-ray autoscaling: fewest replicas (used only when max_replicas > replicas).",
         env="LABS_RAY_MIN_REPLICAS"),
    _key("ray", "max_replicas", integer_at_least(0), 0,
         "labs-serve-ray autoscaling: most replicas; above replicas, Ray Serve adds and removes replicas to keep "
         "target_ongoing_requests per replica. 0: no autoscaling.", env="LABS_RAY_MAX_REPLICAS"),
    _key("ray", "target_ongoing_requests", number_between(0.0, 1e6, low_open=True), 8.0,
         "labs-serve-ray autoscaling: requests per replica (running and waiting: its queue depth) the "
         "autoscaler aims for.", env="LABS_RAY_TARGET_ONGOING_REQUESTS"),
    _key("ray", "max_ongoing_requests", integer_at_least(1), 64,
         "labs-serve-ray: requests one replica takes at once; more wait in Ray Serve's router for a free replica.",
         env="LABS_RAY_MAX_ONGOING_REQUESTS"),
    _key("ray", "replica_cpus", number_between(0.0, 1024.0), 1.0,
         "labs-serve-ray: CPUs Ray reserves for each replica (its engine's cpu_threads when that is auto).",
         env="LABS_RAY_REPLICA_CPUS"),
    _key("ray", "replica_gpus", number_between(0.0, 64.0), 0.0,
         "labs-serve-ray: GPUs Ray reserves for each replica.", env="LABS_RAY_REPLICA_GPUS"),
    _key("ray", "affinity_max_imbalance", integer_at_least(0), 8,
         "labs-serve-ray routing: a conversation goes to the replica holding its prefix unless that replica has "
         "this many more requests in flight than the least loaded one; then to the least loaded.",
         env="LABS_RAY_AFFINITY_MAX_IMBALANCE"),
    # [paths]
    _key("paths", "cache_dir", _path, Path("~/.cache/labs").expanduser(),
         "Where converted models and other rebuildable files are kept.", env="LABS_CACHE_DIR"),
    _key("paths", "home", _path, Path("~/.labs").expanduser(),
         "labs' own data folder (config fallback, vector store).", env="LABS_HOME", toml=False),
    _key("paths", "config", _optional_path, None,
         "Path of labs.toml; otherwise ./labs.toml, then $LABS_HOME/labs.toml.",
         env="LABS_CONFIG", flag="--config", toml=False),
)

KEYS_BY_DOTTED: dict[str, Key] = {key.dotted: key for key in KEYS}
KEYS_BY_ENV: dict[str, Key] = {key.env: key for key in KEYS}
TABLES: tuple[str, ...] = ("generation", "quantization", "server", "engine", "embeddings", "rag", "ray", "paths", "models",
                           "keys")
