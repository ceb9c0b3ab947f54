"""`ftstudio metrics`: the training side (and the GPUs) as a Prometheus endpoint, without serving a model.

The monitoring profile of docker-compose.yml runs it beside the studio: the studio trains, this reads the
same runs/ folder (app/serve/train_metrics.py), Prometheus scrapes both it and the API server.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from app.serve.metrics import standard_collectors


def exporter_registry(runs_dir: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    for collector in standard_collectors(runs_dir):
        registry.register(collector)
    return registry


def metrics_main(runs_dir: str, host: str = "127.0.0.1", port: int = 9400) -> int:
    folder = Path(runs_dir)
    if not folder.is_dir():
        print(f"metrics: the runs folder '{folder}' does not exist.", file=sys.stderr)
        return 1
    server, thread = start_http_server(port, addr=host, registry=exporter_registry(folder))
    print(f"metrics: training runs in {folder} on http://{host}:{port}/metrics", file=sys.stderr, flush=True)
    try:
        while thread.is_alive():
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0
