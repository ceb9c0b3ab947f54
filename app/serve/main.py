"""`ftstudio api`: load a serving backend (transformers, vLLM or llama.cpp) and serve it with uvicorn."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from app.chat.adapters import AdapterError
from app.config import ConfigError
from app.loop.history import LoopError
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


def choose_thread_policy() -> str:
    """The worker's OpenMP rule (app/train/threads.py), decided before torch loads: a server that shares
    the CPU with a training run must not spin its threads against it."""
    from app.train.threads import choose_omp_wait_policy

    return choose_omp_wait_policy()


def api_main(model: str | None = None, adapters: list[str] | None = None, host: str = "127.0.0.1",
             port: int = 8000, api_key: str | None = None, max_queue: int = 64, backend: str = "transformers",
             max_batch: int | None = None, runs_dir: str | None = None, tensor_parallel: int | None = None,
             dtype: str | None = None, dataset_dir: str | None = ".", loop: str | None = None,
             feedback: bool = True) -> int:
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
    if backend == "transformers":
        print(f"api: {choose_thread_policy()}", file=sys.stderr)
    import uvicorn

    from app.chat.backends import BackendUnavailable, load_backend
    from app.serve.api import create_app

    options: dict = {"max_batch": max_batch}
    if dtype:
        options["dtype"] = dtype
    if tensor_parallel:
        options["tensor_parallel"] = tensor_parallel
    try:
        engine = load_backend(backend, model, specs, **options)
    except (ModelSourceError, AdapterError, BackendUnavailable, ValueError) as exc:
        print(f"api: {exc}", file=sys.stderr)
        return 1
    runs = Path(runs_dir) if runs_dir else None
    try:
        app = create_app(engine, api_key=key or None, max_queue=max_queue, runs_dir=runs,
                         **feedback_options(runs, dataset_dir, loop, feedback))
    except (LoopError, AdapterError, ConfigError) as exc:
        print(f"api: {exc}", file=sys.stderr)
        engine.close()
        return 1
    print(f"api: {backend} backend serving {', '.join(engine.names())} on http://{host}:{port}/v1 "
          f"({'bearer key required' if key else 'no key: loopback only'})", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        if getattr(app.state, "loop", None) is not None:
            app.state.loop.close()
        engine.close()
    return 0


def feedback_options(runs: Path | None, dataset_dir: str | None, loop: str | None, feedback: bool) -> dict:
    """create_app's feedback and loop arguments: feedback goes to the loop policy's catalogue when it follows one."""
    if loop and not feedback:
        raise LoopError("--loop learns from feedback: drop --no-feedback.")
    if not feedback or runs is None:
        return {}
    if not loop:
        return {"dataset_dir": Path(dataset_dir or ".")}
    from app.loop.controller import load_policy

    return {"dataset_dir": Path(load_policy(loop).dataset_dir), "loop_policy": Path(loop)}
