"""`ftstudio api --loop POLICY`: serve the loop's model name from the version its history names, and run
the loop's checks in the server.

Two daemon threads:
  follow  every second, read runs/loop/history.jsonl; when the served version changed (a promotion or a
          rollback, made here, in the UI or with `ftstudio loop`), swap the adapter behind the model name
          (backend.replace_adapter: requests already decoding finish on the old weights, new ones use the new)
  check   every check_interval_s, when the policy is enabled: LoopController.run_once() (trains and
          evaluates in separate processes through the job manager; this thread only waits)
The policy is read before every check, so edits from the UI apply without a restart (its model_name is
read once, at start). GET /v1/loop tells clients and the studio which version is served.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI

from app.loop.controller import LoopBusy, LoopController
from app.loop.history import LoopError

log = logging.getLogger("ftstudio.loop")
FOLLOW_S = 1.0


class LoopFollower:
    def __init__(self, backend: Any, runs_dir: str | Path, policy_path: str | Path):
        if not hasattr(backend, "replace_adapter"):
            raise LoopError(f"--loop swaps adapters without a restart, which the {backend.kind} backend cannot do: "
                            "serve with --backend transformers.")
        self.backend = backend
        self._stop = threading.Event()
        self.controller = LoopController(runs_dir, policy_path, should_stop=self._stop.is_set)
        policy = self.controller.policy()
        self.model_name = policy.model_name
        if self.model_name == backend.base_name:
            raise LoopError(f"model_name: {self.model_name!r} is the base model's own name; choose another one.")
        self.version: int | None = None
        self.error: str | None = None
        self.last_cycle: str | None = None
        self._threads: list[threading.Thread] = []
        self._sync_lock = threading.Lock()
        self.controller.history.ensure_start(policy.adapter)

    def start(self) -> None:
        """Load the served version now (a bad adapter stops the server from starting), then follow."""
        self.sync(raise_errors=True)
        for name, target in (("ftstudio-loop-follow", self._follow), ("ftstudio-loop-check", self._check)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def sync(self, raise_errors: bool = False) -> None:
        with self._sync_lock:  # both threads sync: one swap per change
            served = self.controller.history.served()
            if served is None or served.number == self.version:
                return
            try:
                self.backend.replace_adapter(self.model_name, served.adapter)
            except Exception as exc:  # noqa: BLE001 - a broken version must not stop serving the current one
                self.error = f"could not serve version {served.number} ({served.adapter}): {exc}"
                _say(self.error)
                if raise_errors:
                    raise LoopError(self.error) from exc
                self.version = served.number  # not retried until the history names another version
                return
            self.version, self.error = served.number, None
            _say(f"serving version {served.number} as '{self.model_name}' ({served.adapter or 'the base model'})")

    def _follow(self) -> None:
        while not self._stop.wait(FOLLOW_S):
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - keep following
                log.exception("loop: following the history failed")

    def _check(self) -> None:
        interval = FOLLOW_S
        while not self._stop.wait(interval):
            try:
                policy = self.controller.policy()
                interval = policy.check_interval_s
                if policy.enabled:
                    cycle = self.controller.run_once()
                    if cycle is not None:
                        self.last_cycle = f"v{cycle.version}: {cycle.reason}"
                        _say(self.last_cycle)
                        self.sync()
            except LoopBusy:
                continue
            except LoopError as exc:
                self.last_cycle = str(exc)
                _say(str(exc))
            except Exception:  # noqa: BLE001 - a bug in one check must not end the checks
                log.exception("loop: a check failed")

    def describe(self) -> dict[str, Any]:
        status = self.controller.status()
        policy = status.policy
        return {"object": "loop", "model": self.model_name, "version": self.version, "error": self.error,
                "adapter": next((v.adapter for n, v in self.controller.history.versions().items()
                                 if n == self.version), None),
                "policy": str(self.controller.policy_path), "enabled": bool(policy and policy.enabled),
                "method": policy.method if policy else None, "feedback_set": status.feedback_set,
                "new_rows": status.new_rows, "min_new_rows": policy.min_new_rows if policy else None,
                "activity": status.activity, "last_cycle": self.last_cycle}


def _say(message: str) -> None:
    print(f"loop: {message}", file=sys.stderr, flush=True)  # beside uvicorn's lines in the server's log


def install_loop(app: FastAPI, v1: APIRouter, backend: Any, runs_dir: Path, policy_path: Path) -> LoopFollower:
    """Serve the loop's model name (its current version loaded now), follow it, add GET /v1/loop."""
    follower = LoopFollower(backend, runs_dir, policy_path)
    follower.start()
    app.state.loop = follower

    @v1.get("/loop")
    async def loop_status() -> dict[str, Any]:
        return await asyncio.to_thread(follower.describe)

    return follower
