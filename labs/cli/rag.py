"""`labs-gen rag ...`: ingest, list, delete and query the user's document index.

    labs-gen rag ingest docs/ handbook.pdf     # files and folders (recursive)
    labs-gen rag list
    labs-gen rag query "How many vacation days do I get?"
    labs-gen rag delete DOCUMENT_ID
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from labs.config import CliValue, Settings, export_dotenv, load_settings
from labs.errors import LabsError

rag_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                      help="Retrieval over your documents: ingest, list, delete, query (answers cite their sources).")
err_console = Console(stderr=True)


def _settings(config: Path | None, overrides: dict[str, CliValue] | None = None) -> Settings:
    export_dotenv()
    values = {"paths.config": CliValue(str(config), "--config")} if config is not None else {}
    return load_settings({**values, **(overrides or {})})


def _embedding_model(settings: Settings) -> Any:
    from labs.embeddings import load_embedding_model

    embeddings = settings.embeddings
    with err_console.status("Loading the embedding model...", spinner="dots"):
        return load_embedding_model(embeddings.model, embeddings.device, settings.model_aliases)


def _run(action: Any) -> None:
    try:
        action()
    except LabsError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None


ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="Path of labs.toml.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@rag_app.command("ingest")
def ingest(paths: Annotated[list[Path], typer.Argument(help="Files or folders (.txt, .md, .html, .pdf).")],
           config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Add or update documents; unchanged files are skipped, a bad file does not stop the rest."""
    from labs.serving.documents import DocumentsService

    def action() -> None:
        settings = _settings(config)
        service = DocumentsService(settings)
        model = _embedding_model(settings)
        try:
            with err_console.status(f"Ingesting into {service.location}...", spinner="dots"):
                report = service.ingest(model, list(paths))
        finally:
            service.close()
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            for item in report.files:
                colour = {"ingested": "green", "unchanged": "dim", "failed": "red"}.get(item.status, "white")
                detail = f"{item.chunks} chunks" if item.status != "failed" else item.message
                Console().print(f"[{colour}]{item.status:>9}[/] {item.source}  ({detail})", highlight=False)
            err_console.print(report.summary())
        if report.failed and not report.ingested and not report.unchanged:
            raise typer.Exit(1)

    _run(action)


@rag_app.command("list")
def list_documents(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The indexed documents."""
    from labs.serving.documents import DocumentsService

    def action() -> None:
        settings = _settings(config)
        service = DocumentsService(settings)
        try:
            documents = service.index(_embedding_model(settings)).list_documents()
        finally:
            service.close()
        if as_json:
            print(json.dumps([d.to_dict() for d in documents], indent=2, default=str))
            return
        if not documents:
            err_console.print(f"No documents in {service.location} yet: labs-gen rag ingest PATH")
            return
        table = Table(title=f"Documents in {service.location}", title_justify="left")
        for column in ("id", "title", "source", "chunks"):
            table.add_column(column, overflow="fold")
        for document in documents:
            table.add_row(document.document_id, document.title, document.source, str(document.chunks))
        Console().print(table)

    _run(action)


@rag_app.command("delete")
def delete(document_id: Annotated[str, typer.Argument(help="An id from `labs-gen rag list`.")],
           config: ConfigOption = None) -> None:
    """Remove a document and its chunks."""
    from labs.serving.documents import DocumentsService

    def action() -> None:
        settings = _settings(config)
        service = DocumentsService(settings)
        try:
            deleted = service.index(_embedding_model(settings)).delete(document_id)
        finally:
            service.close()
        if not deleted:
            raise LabsError(f"no document with id {document_id!r}: `labs-gen rag list` shows the ids")
        err_console.print(f"deleted {document_id}")

    _run(action)


@rag_app.command("query")
def query(question: Annotated[str, typer.Argument(help="Your question.")],
          top_k: Annotated[Optional[int], typer.Option("--top-k", help="Chunks to retrieve (LABS_RAG_TOP_K).")] = None,
          model: Annotated[Optional[str], typer.Option("--model", "-m", help="Chat model to answer with.")] = None,
          max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens")] = None,
          stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
          config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Answer from your documents and list the sources it used."""
    from labs.cli.generation import generate_for_cli

    def action() -> None:
        overrides: dict[str, CliValue] = {}
        if model is not None:
            overrides["generation.model_name"] = CliValue(model, "--model")
        if max_new_tokens is not None:
            overrides["generation.max_new_tokens"] = CliValue(max_new_tokens, "--max-new-tokens")
        if top_k is not None:
            overrides["rag.top_k"] = CliValue(top_k, "--top-k")
        settings = _settings(config, overrides)
        chosen: dict[str, Any] = {}

        def on_sources(sources: list[dict[str, Any]]) -> None:  # before the answer streams
            chosen["sources"] = sources
            if not as_json and sources:
                Console(stderr=True).print("Sources: " + "; ".join(f"[{s['id']}] {s['document']}" for s in sources),
                                           highlight=False)

        on_text = (lambda delta: (sys.stdout.write(delta), sys.stdout.flush())) if stream and not as_json else None
        with err_console.status("Loading model...", spinner="dots") as status:
            result, _ = generate_for_cli(settings, question, None, on_text, status.update, use_data=False,
                                         use_docs=True, on_sources=on_sources)
        sources = chosen.get("sources", [])
        if as_json:
            print(json.dumps({"answer": result.text, "sources": sources, "finish_reason": result.finish_reason},
                             indent=2, ensure_ascii=False))
            return
        print("" if stream else result.text)
        console = Console()
        for source in sources:
            console.print(f"[{source['id']}] {source['document']} ({source['source']}, chunk {source['chunk']}, "
                          f"score {source['score']:.2f}): {source['snippet']}", highlight=False, soft_wrap=True)

    _run(action)
