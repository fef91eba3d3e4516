"""labs as a Ray Serve application: N engine replicas behind one OpenAI-compatible HTTP API.

```
HTTP --> Serve proxy --> LabsIngress (no model; reads the body, computes the conversation key)
                           --handle, PrefixAffinityRouter--> LabsReplica x N (labs' FastAPI app + engine each)
```

Two deployments because a Serve request router sees only the arguments a handle call carries,
never an HTTP body: the ingress puts the body and its conversation key (labs.rayserve.affinity) in
a `WireRequest`, the router (labs.rayserve.router) picks the replica, and the replica calls labs'
own app in-process (labs.rayserve.asgi), so every route, protocol and error works as in labs-api.
Each response names its replica in `x-labs-replica`.

Replicas read their settings from the environment (labs.toml via LABS_CONFIG, LABS_*), which
`replica_environment` carries to Ray workers on any node. A replica that dies loses only its own
in-flight requests: the ingress retries a request whose replica died before answering on another
one, and Serve starts a replacement. Unfinished batch jobs are not resumed by replicas (two would
run the same job); labs-api resumes them.
"""

import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from labs.errors import ConfigError
from labs.rayserve.affinity import conversation_key
from labs.rayserve.asgi import ResponseStart, WireRequest, call_app

logger = logging.getLogger(__name__)

REPLICA_HEADER = "x-labs-replica"
ROUTER = "labs.rayserve.router.PrefixAffinityRouter"
FORWARDED_ENV_PREFIXES = ("LABS_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TQDM_")
RETRIES_ON_REPLICA_DEATH = 2
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

proxy = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # labs' own /docs pass through


# Defined before the deployments: serve.ingress pickles the proxy app, with the globals its routes use, when the
# class is decorated.
async def _rest(stream: DeploymentResponseGenerator) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    finally:
        stream.cancel()  # the client left (or all is sent): stop the replica's work


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                                   "param": None, "code": code}}, status_code=status)


@serve.deployment(name="LabsReplica", request_router_config=RequestRouterConfig(request_router_class=ROUTER))
class LabsReplica:
    """One labs server (app, models, engine) in a Ray actor; requests arrive as WireRequests."""

    async def __init__(self) -> None:
        from labs.api.factory import create_app
        from labs.config import load_settings

        self._app = create_app(load_settings({}), resume_batch_jobs=False)
        self._lifespan = self._app.router.lifespan_context(self._app)
        await self._lifespan.__aenter__()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._tag = [(REPLICA_HEADER.encode(), self.replica_id.encode())]
        logger.info("labs replica %s ready", self.replica_id)

    async def forward(self, request: WireRequest) -> AsyncIterator[ResponseStart | bytes]:
        async for item in call_app(self._app, request, self._tag):
            yield item

    async def check_health(self) -> None:
        """Serve's health check: labs' /health is 503 once an engine has died; Serve then replaces the replica."""
        async for item in call_app(self._app, WireRequest("GET", "/health", b"", [], b"")):
            if isinstance(item, ResponseStart) and item.status != 200:
                raise RuntimeError(f"labs /health answered {item.status}")

    async def __del__(self) -> None:
        await self._lifespan.__aexit__(None, None, None)


@serve.deployment(name="LabsIngress")
@serve.ingress(proxy)
class LabsIngress:
    """The HTTP face: every path goes to a replica chosen by the prefix-affinity router."""

    def __init__(self, replicas: DeploymentHandle, max_body: int) -> None:
        self._replicas = replicas.options(stream=True)
        self._max_body = max_body

    @proxy.api_route("/{path:path}", methods=METHODS, include_in_schema=False)
    async def forward(self, request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self._max_body:
                return _error(413, f"the request body is larger than {self._max_body} bytes", "request_too_large")
        content_type = request.headers.get("content-type", "")
        wire = WireRequest(request.method, request.scope["path"], request.scope.get("query_string", b""),
                           list(request.headers.raw), bytes(body), tuple(request.client) if request.client else None,
                           conversation_key(bytes(body), content_type) if request.method == "POST" else None)
        for attempt in range(RETRIES_ON_REPLICA_DEATH + 1):
            stream: DeploymentResponseGenerator = self._replicas.forward.remote(wire)
            try:
                start = await stream.__anext__()
                break
            except (RayActorError, ActorUnavailableError) as error:
                logger.warning("replica died before answering %s %s (try %d): %s", wire.method, wire.path,
                               attempt + 1, error)
        else:
            return _error(503, "no labs replica could answer; try again shortly", "replica_unavailable")
        response = StreamingResponse(_rest(stream), status_code=start.status)
        response.raw_headers = list(start.headers)
        return response


def replica_environment(settings: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a replica needs on any node: labs' variables and the config file's path, and
    one CPU thread per CPU Ray reserves for it when cpu_threads is auto."""
    environ = os.environ if environ is None else environ
    env = {name: value for name, value in environ.items() if name.startswith(FORWARDED_ENV_PREFIXES)}
    if settings.config_file is not None:
        env["LABS_CONFIG"] = str(settings.config_file.resolve())
    if settings.engine.cpu_threads == "auto" and settings.ray.replica_cpus >= 1:
        env["LABS_CPU_THREADS"] = str(int(settings.ray.replica_cpus))
    return env


def scaling_options(ray_settings: Any) -> dict[str, Any]:
    """num_replicas, or Serve's autoscaling on ongoing requests (running + waiting) per replica."""
    if ray_settings.max_replicas <= ray_settings.replicas:
        return {"num_replicas": ray_settings.replicas}
    if ray_settings.min_replicas > ray_settings.replicas:
        raise ConfigError(f"ray.min_replicas ({ray_settings.min_replicas}) is above ray.replicas ({ray_settings.replicas})")
    return {"autoscaling_config": {"min_replicas": ray_settings.min_replicas, "initial_replicas": ray_settings.replicas,
                                   "max_replicas": ray_settings.max_replicas,
                                   "target_ongoing_requests": ray_settings.target_ongoing_requests}}


def build_app(settings: Any, environ: Mapping[str, str] | None = None, router: str = ROUTER) -> serve.Application:
    """The Serve application for `settings` (its [ray] table sizes the replicas). `router`: the request router's
    import path (bench/ray_serve_bench.py compares with Serve's default, power of two choices)."""
    env = replica_environment(settings, environ)
    rays = settings.ray
    actor_options = {"num_cpus": rays.replica_cpus, "num_gpus": rays.replica_gpus, "runtime_env": {"env_vars": env}}
    kwargs = {"max_imbalance": rays.affinity_max_imbalance} if router == ROUTER else {}
    router = RequestRouterConfig(request_router_class=router, request_router_kwargs=kwargs)
    replicas = LabsReplica.options(ray_actor_options=actor_options, max_ongoing_requests=rays.max_ongoing_requests,
                                   graceful_shutdown_timeout_s=settings.server.shutdown_timeout,
                                   request_router_config=router, **scaling_options(rays))
    ingress = LabsIngress.options(ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}},
                                  max_ongoing_requests=max(1000, 4 * rays.max_ongoing_requests))
    max_body = max(settings.server.max_body_size, settings.server.max_file_size + 1024**2)
    return ingress.bind(replicas.bind(), max_body)


def app_from_environment(args: dict[str, Any] | None = None) -> serve.Application:
    """Builder for `serve run` / a RayService's serveConfigV2 (`import_path: labs.rayserve.app:app_from_environment`):
    the settings come from the environment of the node that builds the app (labs.toml via LABS_CONFIG, LABS_*)."""
    from labs.config import load_settings

    return build_app(load_settings({}))
