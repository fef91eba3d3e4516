"""Run every query of the Grafana dashboards against a Prometheus that scrapes labs-api.

    uv run python scripts/check_prometheus.py --prometheus http://127.0.0.1:9090

Prints each panel's queries with the number of series they return now, and the scrape targets of the
"labs" job with their health. Exits 1 when no labs target is up or a query fails; a query that returns
nothing (no traffic of that kind yet, no histogram observation in the window) is reported, not failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards"


def _get(base: str, path: str, **params: str) -> dict:
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    args = parser.parse_args()
    targets = [t for t in _get(args.prometheus, "/api/v1/targets")["data"]["activeTargets"] if t["labels"].get("job") == "labs"]
    for target in targets:
        print(f"target {target['scrapeUrl']}: {target['health']} {target['lastError']}".rstrip())
    failed = not any(target["health"] == "up" for target in targets)
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                answer = _get(args.prometheus, "/api/v1/query", query=target["expr"])
                if answer.get("status") != "success":
                    failed = True
                    print(f"FAILED {panel['title']}: {target['expr']}: {answer}")
                    continue
                print(f"{len(answer['data']['result']):3d} series  {panel['title']}: {target['expr']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
