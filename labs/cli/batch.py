"""`labs-gen batch`: run a file of requests on the local engine, at full speed, resumable.

    labs-gen batch requests.jsonl -o results.jsonl      # OpenAI's batch line format, in and out
    labs-gen batch prompts.txt -o answers.jsonl --max-new-tokens 200   # one prompt per line

Each line runs exactly as the server's endpoint would answer it (the same app, in this process,
without a socket), so a file made for /v1/batches runs here unchanged and gives the same output
lines. Results are appended as they finish; run the same command again after an interruption and
only the lines without a result run. Lines that are not valid requests, and requests the endpoint
refuses, go to the errors file with the reason.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import deque
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from labs.api.batch_lines import ENDPOINTS, parse_lines
from labs.config import CliValue, Settings, export_dotenv, load_settings
from labs.errors import LabsError

err_console = Console(stderr=True)


def prompt_lines(text: str, max_tokens: int | None, temperature: float | None, system: str | None) -> bytes:
    """A text file of prompts (one per non-empty line) as chat request lines, custom_id `line-N`."""
    lines = []
    for number, prompt in enumerate(text.splitlines(), start=1):
        if not prompt.strip():
            continue
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        body: dict[str, Any] = {"messages": messages}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        lines.append({"custom_id": f"line-{number}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)


def endpoint_of(data: bytes) -> str:
    """The endpoint of a request file: the `url` of its first line that names one."""
    for raw in data.decode("utf-8", errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("url") in ENDPOINTS:
            return line["url"]
    raise LabsError(f"no line names an endpoint: each line needs \"url\", one of {', '.join(ENDPOINTS)}")


async def run_batch(settings: Settings, data: bytes, endpoint: str, output: Any, errors: Any,
                    progress: Progress) -> tuple[int, int, int, bool]:
    """Run the lines without a result yet; (completed, failed, skipped as done before, interrupted)."""
    from labs.api.batch_runner import run_lines
    from labs.api.factory import create_app

    valid, problems, _ = parse_lines(data, endpoint)
    failed_before = errors.lines()
    done_before = {line["custom_id"] for line in output.lines()} | {line["custom_id"] for line in failed_before}
    refused_before = {line["error"]["message"] for line in failed_before if line.get("error")}
    refused = [problem for problem in problems if problem["error"]["message"] not in refused_before]
    for problem in refused:  # a rerun does not write the same refusal twice
        errors.append(problem)
    todo = deque(line for line in valid if line.custom_id not in done_before)
    skipped = len(valid) - len(todo)
    task = progress.add_task("requests", total=len(todo))
    completed = failed = 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    app = create_app(settings, resume_batch_jobs=False)

    def record_result(result: dict[str, Any]) -> None:
        nonlocal completed, failed
        if result["response"]["status_code"] < 300:
            output.append(result)
            completed += 1
        else:
            errors.append(result)
            failed += 1
        progress.update(task, advance=1, description=f"{completed} answered, {failed} failed")

    try:
        async with app.router.lifespan_context(app):
            await run_lines(app, endpoint, todo, app.state.labs.batches.token, stop, settings.engine.max_num_seqs, record_result)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return completed, failed + len(refused), skipped, stop.is_set()


def batch(
    input_file: Annotated[Path, typer.Argument(help="Requests: OpenAI batch lines (JSONL), or prompts, one per line (.txt or --prompts).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where answers go (JSONL, appended; rerun to resume).")],
    errors_file: Annotated[Optional[Path], typer.Option("--errors", help="Where refused lines go (default: OUTPUT with .errors.jsonl).")] = None,
    prompts: Annotated[bool, typer.Option("--prompts", help="Read INPUT as prompts, one per line (the default for .txt).")] = False,
    endpoint: Annotated[Optional[str], typer.Option("--endpoint", help=f"For JSONL: {', '.join(ENDPOINTS)} (default: the lines' url).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Default model (lines may name their own).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="For prompts: a system message for each.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="For prompts: tokens to generate.")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="For prompts: 0 = greedy.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="labs.toml to use.")] = None,
) -> None:
    """Run a file of requests on the local engine; results as OpenAI's batch output lines."""
    try:
        export_dotenv()
        values = {"paths.config": CliValue(str(config), "--config")} if config is not None else {}
        # the lines say what they need: no embedding model loaded for a file of chat requests
        values["embeddings.load_on_start"] = CliValue(False, "labs-gen batch")
        if model is not None:
            values["generation.model_name"] = CliValue(model, "--model")
        settings = load_settings(values)
        try:
            raw = input_file.read_bytes()
        except OSError as error:
            raise LabsError(f"cannot read {input_file}: {error.strerror}") from None
        if prompts or input_file.suffix == ".txt":
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise LabsError(f"{input_file} is not UTF-8 text") from None
            raw, endpoint = prompt_lines(text, max_new_tokens, temperature, system), "/v1/chat/completions"
        elif endpoint is None:
            endpoint = endpoint_of(raw)
        elif endpoint not in ENDPOINTS:
            raise typer.BadParameter(f"one of {', '.join(ENDPOINTS)}", param_hint="--endpoint")
        from labs.api.batch_store import ResultFile

        errors_path = errors_file or output.with_name(output.name.removesuffix(".jsonl") + ".errors.jsonl")
        out, errs = ResultFile(output), ResultFile(errors_path)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=False) as progress:
            completed, failed, skipped, interrupted = asyncio.run(run_batch(settings, raw, endpoint, out, errs, progress))
    except LabsError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    before = f", {skipped} done before" if skipped else ""
    err_console.print(f"{completed} answered, {failed} failed{before}: answers in {output}"
                      + (f", failures in {errors_path}" if failed else ""), highlight=False)
    if interrupted:
        err_console.print("[yellow]interrupted:[/] run the same command again to finish the rest", highlight=False)
        raise typer.Exit(130)
