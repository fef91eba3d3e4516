"""The web page at `/` (chat, documents, transactions, status) and the status it polls.

Every asset ships in the package (labs/api/web; third-party libraries vendored from npm, see
web/vendor/vendor.json), so the page works offline. The page itself needs no key: it asks the user
for one when the API answers 401. Its Content-Security-Policy allows only this origin, so nothing
the page renders (a model's Markdown included) can load or send anything elsewhere.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from labs import __version__
from labs.api.security import require_api_key
from labs.api.state import ServerState, get_state
from labs.serving.status import models_status

WEB = Path(__file__).resolve().parents[1] / "web"

PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                                "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded server serves its own page at once
}

router = APIRouter(tags=["Page"])


class PageAssets(StaticFiles):
    """The page's files, with the same headers as the page."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      *[(k.lower().encode(), v.encode()) for k, v in PAGE_HEADERS.items()]]
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(WEB / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(WEB / "favicon.svg", media_type="image/svg+xml", headers=PAGE_HEADERS)


@router.get("/v1/status", summary="What the server is doing now (the page's status view)",
            dependencies=[Depends(require_api_key)])
async def status(state: ServerState = Depends(get_state)) -> dict[str, Any]:
    embeddings = state.embeddings
    return {
        "version": __version__,
        "default_model": state.models.default_id,
        "models": await asyncio.to_thread(models_status, state.models),
        "embeddings": {"id": embeddings.model_id, "loaded": embeddings.loaded},
    }


def mount_page(app: Any) -> None:
    app.include_router(router)
    app.mount("/ui", PageAssets(directory=WEB), name="ui")
