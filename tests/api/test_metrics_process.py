"""/metrics carries the standard process, platform and GC series next to labs' own."""

from __future__ import annotations

import re

from prometheus_client import generate_latest

from labs.api.metrics import Metrics
from tests.api.conftest import LiveServer

STANDARD = ("process_resident_memory_bytes", "process_virtual_memory_bytes", "process_cpu_seconds_total",
            "process_open_fds", "process_max_fds", "process_start_time_seconds", "python_info",
            "python_gc_objects_collected_total", "python_gc_collections_total")


def values(text: str, name: str) -> list[float]:
    return [float(match) for match in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]


def test_metrics_has_process_platform_and_gc_series(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    for name in STANDARD:
        assert values(text, name), f"{name} missing from /metrics"
    assert values(text, "process_resident_memory_bytes")[0] > 10 * 1024**2
    assert values(text, "process_open_fds")[0] >= 3
    assert 'python_info{implementation="CPython"' in text or "python_info{implementation=" in text
    assert values(text, "labs_models_loaded"), "labs' own series are still there"


def test_each_apps_registry_gets_its_own_collectors() -> None:
    """Several apps live in one process (tests): registering on each app's registry must not clash."""
    first, second = Metrics(), Metrics()
    for metrics in (first, second):
        text = generate_latest(metrics.registry).decode()
        assert values(text, "process_cpu_seconds_total") and values(text, "python_gc_objects_collected_total")
