"""`labs-serve-ray`: N labs engine replicas as a Ray Serve application behind one OpenAI-compatible API.

Starts a local Ray (or joins the cluster at RAY_ADDRESS / --address), deploys the application
(labs.rayserve.app) and serves it on the configured host and port until Ctrl-C or SIGTERM, which
remove it again. With --detach it deploys and exits, leaving the application on the cluster.
Needs the `ray` extra: `uv sync --extra ray` or `pip install 'labs[ray]'`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from labs.cli.gen import _cli_values
from labs.config import export_dotenv, load_settings
from labs.errors import LabsError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)
err_console = Console(stderr=True)
logger = logging.getLogger("labs.cli.serve_ray")
APP_NAME = "labs"


@app.command()
def serve(
    replicas: Annotated[Optional[int], typer.Option("--replicas", "-n", help="Engine replicas (LABS_RAY_REPLICAS).")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="Address the Serve HTTP proxy listens on (LABS_HOST).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Port it listens on (LABS_PORT).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Default model: alias, folder, .gguf or cached Hub id.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Path of labs.toml.")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")] = None,
    num_cpus: Annotated[Optional[int], typer.Option("--num-cpus", help="CPUs a local Ray offers (default: all).")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Deploy and exit; the application keeps running on the cluster.")] = False,
) -> None:
    """Serve labs on Ray Serve with prefix-affinity routing (docs/deploy.md)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        export_dotenv()
        values = _cli_values({"--replicas": replicas, "--host": host, "--port": port, "--model": model,
                              "--config": str(config) if config is not None else None})
        settings = load_settings(values)
    except LabsError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    logging.basicConfig(level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # under `uv run`, Ray would package the working folder and start each worker through `uv run`; replicas
    # need only the installed labs and the environment build_app gives them
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray  # reads the variable above when imported
        from ray import serve

        from labs.rayserve.app import build_app
    except ImportError as error:
        err_console.print(f"[bold red]error:[/] Ray Serve is not installed ({error}); install the extra: "
                          "uv sync --extra ray, or pip install 'labs[ray]'", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None

    environ = dict(os.environ) | _flag_environment(model)
    try:
        application = build_app(settings, environ)
    except LabsError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False)
    serve.start(http_options={"host": settings.server.host, "port": settings.server.port})
    serve.run(application, name=APP_NAME, route_prefix="/")
    url = f"http://{settings.server.host}:{settings.server.port}"
    logger.info("labs on Ray Serve: %s replica(s) of %s at %s/v1", settings.ray.replicas, settings.generation.model_name, url)
    if detach:
        return
    _wait_for_stop()
    logger.info("stopping: removing the application (in-flight requests get %s s)", settings.server.shutdown_timeout)
    serve.delete(APP_NAME)
    serve.shutdown()
    ray.shutdown()


def _flag_environment(model: str | None) -> dict[str, str]:
    """Flags that replicas must see too (they read their settings from the environment)."""
    return {"LABS_MODEL": model} if model else {}


def _wait_for_stop() -> None:
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    stop.wait()


def main() -> None:
    """Console-script entry point."""
    app()
