"""`ftstudio api`: load the base and adapters, then serve the OpenAI-compatible API with uvicorn."""

from __future__ import annotations

import os
import sys

from app.chat.adapters import AdapterError
from app.models.source import ModelSourceError
from app.net import is_loopback


def parse_adapter(spec: str) -> tuple[str, str]:
    """NAME=PATH, or a bare PATH named after its run folder."""
    from app.chat.repl import adapter_name

    name, sep, path = spec.partition("=")
    if not sep:
        return adapter_name(spec), spec
    if not name.strip() or not path.strip():
        raise ValueError(f"--adapter expects NAME=PATH, got '{spec}'")
    return name.strip(), path.strip()


def api_main(model: str | None = None, adapters: list[str] | None = None, host: str = "127.0.0.1",
             port: int = 8000, api_key: str | None = None, max_queue: int = 64) -> int:
    key = api_key if api_key is not None else os.environ.get("FTSTUDIO_API_KEY")
    if not key and not is_loopback(host):
        print(f"api: refusing to serve on {host} without an API key: anyone who can reach this machine "
              "could use the model. Pass --api-key KEY (or set FTSTUDIO_API_KEY), or bind to 127.0.0.1.",
              file=sys.stderr)
        return 2
    try:
        specs = [parse_adapter(spec) for spec in adapters or []]
    except ValueError as exc:
        print(f"api: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from app.chat.engine import ChatEngine
    from app.serve.api import create_app

    try:
        engine = ChatEngine(model)
        for name, path in specs:
            engine.add_adapter(name, path)
    except (ModelSourceError, AdapterError, ValueError) as exc:
        print(f"api: {exc}", file=sys.stderr)
        return 1
    print(f"api: serving {', '.join(engine.names())} on http://{host}:{port}/v1 "
          f"({'bearer key required' if key else 'no key: loopback only'})", file=sys.stderr, flush=True)
    uvicorn.run(create_app(engine, api_key=key or None, max_queue=max_queue), host=host, port=port,
                log_level="info")
    return 0
