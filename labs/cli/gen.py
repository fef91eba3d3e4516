"""`labs-gen`: one-shot generation on the configured model, plus config and GPU reports."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from labs.config import KEYS, CliValue, Settings, export_dotenv, load_settings
from labs.errors import LabsError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)
err_console = Console(stderr=True)
logger = logging.getLogger("labs.cli")

FLAG_KEYS = {key.flag: key.dotted for key in KEYS if key.flag}


def _cli_values(given: dict[str, Any]) -> dict[str, CliValue]:
    """CLI flags that were given, keyed by the setting they override."""
    return {FLAG_KEYS[flag]: CliValue(value, flag) for flag, value in given.items() if value is not None}


@app.callback(invoke_without_command=True)
def gen(
    ctx: typer.Context,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Prompt text (sent as a user message when the model has a chat template).")] = None,
    messages_json: Annotated[Optional[str], typer.Option("--messages-json", help='Chat as JSON: [{"role":"user","content":"Hi"}].')] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System message for the chat.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print text as it is generated.")] = False,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Tokens to generate.")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="0 = greedy.")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="0 disables.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for reproducible sampling.")] = None,
    rag: Annotated[Optional[bool], typer.Option("--rag/--no-rag", help="Answer questions about your transactions from your data (LABS_RAG_ENABLED).")] = None,
    json_schema: Annotated[Optional[Path], typer.Option("--json-schema", help="A JSON schema file the output must validate against.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Alias, folder, .gguf file or cached Hub id.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Path of labs.toml.")] = None,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the effective configuration with each value's source, and exit.")] = False,
    show_gpu: Annotated[bool, typer.Option("--show-gpu", help="Print GPUs, their memory and bf16 support, and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens to stderr.")] = False,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Chat in the terminal (same as `labs-gen chat`).")] = False,
    server: Annotated[Optional[str], typer.Option("--server", help="With --interactive: chat through a labs-api server at this URL.")] = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", help="API key for --server.")] = None,
) -> None:
    """Generate text with the configured model (the embedded SmolLM2-135M-Instruct by default)."""
    _setup_logging(verbose)
    if ctx.invoked_subcommand is not None:
        return  # e.g. `labs-gen rag ...`: the subcommand does the work
    try:
        export_dotenv()
        settings = load_settings(_cli_values({
            "--max-new-tokens": max_new_tokens, "--temperature": temperature, "--top-p": top_p,
            "--top-k": top_k, "--seed": seed, "--model": model, "--system": system, "--rag": rag,
            "--config": str(config) if config is not None else None,
        }))
        if show_gpu:
            _print_gpu(as_json)
            return
        if show_config:
            _print_config(settings, as_json)
            return
        if interactive:
            from labs.cli.chat import run_chat

            run_chat(settings, server, api_key)
            return
        if (prompt is None) == (messages_json is None):
            raise typer.BadParameter("give exactly one of --prompt or --messages-json", param_hint="--prompt")
        _generate(settings, prompt, messages_json, stream, as_json, _guided_from_file(json_schema))
    except LabsError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


@app.command("chat")
def chat(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Alias, folder, .gguf file or cached Hub id (or the server's model id).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System message for the chat.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Tokens to generate per answer.")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="0 = greedy.")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="0 disables.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    rag: Annotated[Optional[bool], typer.Option("--rag/--no-rag", help="Answer questions about your transactions from your data.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Path of labs.toml.")] = None,
    server: Annotated[Optional[str], typer.Option("--server", help="Chat through a labs-api server at this URL.")] = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", help="API key for --server.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens to stderr.")] = False,
) -> None:
    """Chat in the terminal (slash commands: /help)."""
    _setup_logging(verbose)
    if verbose:  # the group callback already configured logging without -v
        logging.getLogger().setLevel(logging.INFO)
    try:
        export_dotenv()
        settings = load_settings(_cli_values({
            "--max-new-tokens": max_new_tokens, "--temperature": temperature, "--top-p": top_p,
            "--top-k": top_k, "--seed": seed, "--model": model, "--system": system, "--rag": rag,
            "--config": str(config) if config is not None else None,
        }))
        from labs.cli.chat import run_chat

        run_chat(settings, server, api_key)
    except LabsError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _setup_logging(verbose: bool) -> None:
    """Quiet transformers and the Hub's progress bars through the variables they read when imported,
    so that commands which never load a model (a data answer, --show-config) never import them."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # the GGUF reader draws its own tqdm bar under our spinner; tqdm reads this at import
        os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["TRANSFORMERS_VERBOSITY"] = "info" if verbose else "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # already imported (e.g. by a caller in the same process): tell it directly
        import transformers
        from huggingface_hub.utils import disable_progress_bars

        transformers.utils.logging.set_verbosity_info() if verbose else transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        disable_progress_bars()


def _guided_from_file(path: Path | None) -> Any:
    """--json-schema FILE as a grammar for the engine (None without the flag)."""
    if path is None:
        return None
    from labs.serving.guided import GuidedDecoding

    try:
        schema = json.loads(path.read_text())
    except OSError as error:
        raise LabsError(f"--json-schema: cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise LabsError(f"--json-schema: {path} is not valid JSON: {error}") from None
    if not isinstance(schema, dict):
        raise LabsError(f"--json-schema: {path} must hold a JSON schema object")
    return GuidedDecoding("json_schema", json.dumps(schema), field="--json-schema")


def _generate(settings: Settings, prompt: str | None, messages_json: str | None, stream: bool, as_json: bool,
              guided: Any = None) -> None:
    from labs.cli.generation import generate_for_cli

    on_text = None
    if stream and not as_json:
        def on_text(delta: str) -> None:
            sys.stdout.write(delta)
            sys.stdout.flush()

    with err_console.status("Loading model...", spinner="dots") as status:
        result, loaded = generate_for_cli(settings, prompt, messages_json, on_text, status.update, guided=guided)
    if loaded is None:  # answered from the user's data
        if as_json:
            print(json.dumps({"source": result.source, "text": result.text, "data": result.data,
                              "seconds": round(result.seconds, 4)}, ensure_ascii=False, default=str))
        else:
            print(result.text)
            err_console.print(f"[dim](answered exactly from your {result.source}; --no-rag asks the model)[/]")
        return
    if as_json:
        print(json.dumps({
            "source": "model",
            "model": loaded.name,
            "text": result.text,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "load_seconds": round(loaded.load_seconds, 3),
            "import_seconds": round(loaded.import_seconds, 3),
            "time_to_first_token_seconds": round(result.time_to_first_token, 3),
            "generation_seconds": round(result.seconds, 3),
            "tokens_per_second": round(result.tokens_per_second, 2),
        }, ensure_ascii=False))
    elif stream:
        sys.stdout.write("\n")
    else:
        print(result.text)


def _print_config(settings: Settings, as_json: bool) -> None:
    from labs.cli.effective import effective_config

    report = effective_config(settings)
    if as_json:
        print(json.dumps(report, default=str, indent=2))
        return
    table = Table(title="labs effective configuration", title_justify="left")
    for column in ("key", "value", "source"):
        table.add_column(column, overflow="fold")
    for row in report["settings"]:
        table.add_row(row["key"], str(row["value"]), row["source"])
    for alias, row in report["model_aliases"].items():
        table.add_row(f"models.{alias}", row["target"], row["source"])
    for name, row in report["api_keys"].items():
        limits = ", ".join(f"{field} {row[field]}" for field in ("requests_per_minute", "tokens_per_minute", "max_concurrent")
                           if row[field] is not None) or "no limits"
        models = row["models"] if row["models"] == "all" else ", ".join(row["models"])
        table.add_row(f"keys.{name}", f"{limits}; models: {models}; priority {row['priority']}",
                      f"{row['source']} (secret: {row['secret']})")
    console = Console(width=max(Console().width, 120))
    console.print(table)
    console.print(f"config file: {report['config_file'] or 'none (./labs.toml and $LABS_HOME/labs.toml absent)'}")
    for label, value in report["resolved"].items():
        console.print(f"{label}: {value}", highlight=False)


def _print_gpu(as_json: bool) -> None:
    from labs.cli.system_info import accelerator_report

    report = accelerator_report()
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console = Console()
    console.print(f"torch {report['torch']} (CUDA build: {report['cuda_build'] or 'none'})")
    if not report["gpus"]:
        console.print("No CUDA GPU is available: models run on the CPU" + (" or Apple MPS" if report["mps_available"] else "") + ".")
    for gpu in report["gpus"]:
        console.print(
            f"GPU {gpu['index']}: {gpu['name']} (compute {gpu['compute_capability']}), "
            f"{gpu['memory_free_gib']} GiB free of {gpu['memory_total_gib']} GiB, bf16: {'yes' if gpu['bf16'] else 'no'}"
        )
    cpu = report["cpu"]
    console.print(f"CPU: {cpu['machine']}, {cpu['cores']} cores, torch threads {cpu['torch_threads']}, native bf16: {'yes' if cpu['native_bf16'] else 'no'}")


def main() -> None:
    """Console-script entry point. Once a model has run, the process ends without Python's
    teardown: finalizing torch and transformers' thousands of modules took 0.9-1.2 s after the
    answer was printed (measured here), time a shell user waits for the prompt to come back."""
    try:
        app()
        code: int | str | None = 0
    except SystemExit as done:
        code = done.code
    if "torch" not in sys.modules:
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)  # what sys.exit would print for a message
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that went away (`| head`): nothing more can be delivered
            pass
    logging.shutdown()
    os._exit(code or 0)


def _register_subcommands() -> None:
    from labs.cli.batch import batch
    from labs.cli.rag import rag_app

    app.add_typer(rag_app, name="rag")
    app.command("batch")(batch)


_register_subcommands()
