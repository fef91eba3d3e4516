"""Health, readiness and Prometheus metrics: what orchestrators and monitoring poll."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from labs.api.security import require_api_key
from labs.api.state import ServerState, get_state

router = APIRouter(tags=["Operations"])


@router.get("/health", summary="Liveness: 503 when an engine has died")
@router.get("/v1/health", include_in_schema=False)
async def health(state: ServerState = Depends(get_state)) -> Any:
    dead = [served.id for served in state.models.loaded_models() if not served.engine.alive]
    if dead:
        return JSONResponse({"status": "error", "dead_engines": dead}, status_code=503)
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: 503 until the default model is loaded")
async def ready(state: ServerState = Depends(get_state)) -> Any:
    loaded = state.models.default_loaded
    return JSONResponse({"loaded": loaded, "model": state.models.default_id}, status_code=200 if loaded else 503)


@router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_api_key)])
def metrics(state: ServerState = Depends(get_state)) -> Response:  # sync: a scrape may wait for engine stats
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
