"""`labs-api`: serve the OpenAI-compatible API with uvicorn.

SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight requests finish for up to
LABS_SHUTDOWN_TIMEOUT seconds, then stops the engines.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from labs.config import export_dotenv, load_settings
from labs.cli.gen import _cli_values
from labs.errors import LabsError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)
err_console = Console(stderr=True)
logger = logging.getLogger("labs.cli.api")


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option("--host", help="Address to listen on (LABS_HOST).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Port to listen on (LABS_PORT); 0 picks a free one.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Default model: alias, folder, .gguf or cached Hub id.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Path of labs.toml.")] = None,
    preload: Annotated[Optional[bool], typer.Option("--preload/--no-preload", help="Load the default model before accepting traffic.")] = None,
    log_level: Annotated[Optional[str], typer.Option("--log-level", help="critical, error, warning, info or debug.")] = None,
) -> None:
    """Serve the OpenAI-compatible API (docs at http://HOST:PORT/docs)."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in server logs
    try:
        export_dotenv()
        values = _cli_values({"--host": host, "--port": port, "--model": model, "--log-level": log_level,
                              "--config": str(config) if config is not None else None})
        settings = load_settings(values)
        if preload is not None:
            settings = settings.with_overrides(_preload_override(preload))
    except LabsError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    level = settings.server.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from labs.api.factory import create_app

    try:
        api = create_app(settings)
    except LabsError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    address = f"http://{settings.server.host}:{settings.server.port}"
    logger.info("labs-api: default model %s; open %s/ in a browser to chat; API docs at %s/docs",
                settings.generation.model_name, address, address)
    uvicorn.run(api, host=settings.server.host, port=settings.server.port, log_level=level,
                timeout_graceful_shutdown=settings.server.shutdown_timeout)


def _preload_override(preload: bool):  # noqa: ANN202 - a {dotted: CliValue} mapping
    from labs.config import CliValue

    return {"server.preload_on_start": CliValue(preload, "--preload" if preload else "--no-preload")}


def main() -> None:
    """Console-script entry point."""
    app()
