"""Start and stop `ftstudio api` from the UI: one server process per runs folder, in its own process group.

Its pid, port and command go to `<runs>/.api-server/server.json` and its output to `api.log` (a file,
never a pipe), so a restarted UI still finds the server and can stop it. The API key travels in the
environment (FTSTUDIO_API_KEY), never on the command line where `ps` would show it. No gradio here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from app.atomic import write_json_atomic
from app.jobs.process import reap, stop_process
from app.net import is_loopback

STOP_GRACE_S = 10.0


class ServerError(RuntimeError):
    """The server cannot start (port taken, already running, unsafe host); the message says why."""


@dataclass
class ServerStatus:
    state: str  # stopped | starting | ready | exited
    pid: int | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    models: list[str] | None = None
    has_key: bool = False
    log_tail: str = ""

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/v1"


def api_command(python: str, model: str | None, adapters: list[tuple[str, str]], host: str, port: int,
                backend: str = "transformers", extra: list[str] | None = None) -> list[str]:
    cmd = [python, "-m", "app.cli", "api", "--host", host, "--port", str(port)]
    if backend != "transformers":
        cmd += ["--backend", backend]
    if model:
        cmd += ["--model", model]
    for name, path in adapters:
        cmd += ["--adapter", f"{name}={path}"]
    return cmd + list(extra or [])


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def curl_example(status: ServerStatus, model: str) -> str:
    auth = ' \\\n  -H "Authorization: Bearer $FTSTUDIO_API_KEY"' if status.has_key else ""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello! Who are you?"}],
                       "stream": False})
    return (f"curl {status.base_url}/chat/completions \\\n  -H 'Content-Type: application/json'{auth} \\\n"
            f"  -d '{body}'")


class ApiServer:
    def __init__(self, state_dir: Path, python: str | None = None):
        self.state_dir = Path(state_dir)
        self.python = python or sys.executable
        self.state_file = self.state_dir / "server.json"
        self.log_file = self.state_dir / "api.log"
        self._child: subprocess.Popen | None = None  # the process this UI started (reaped on stop)

    def _record(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def _alive(self, record: dict[str, Any] | None) -> bool:
        if not record or not record.get("pid"):
            return False
        try:
            proc = psutil.Process(record["pid"])
            return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= record.get("started", 0) + 5
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def start(self, model: str | None, adapters: list[tuple[str, str]], host: str = "127.0.0.1", port: int = 8000,
              api_key: str | None = None, backend: str = "transformers", extra: list[str] | None = None
              ) -> ServerStatus:
        host = (host or "127.0.0.1").strip()
        if not 1 <= int(port) <= 65535:
            raise ServerError(f"Port {port} is not between 1 and 65535.")
        if not api_key and not is_loopback(host):
            raise ServerError(f"Serving on {host} needs an API key: anyone who can reach this machine could use "
                              "the model. Enter a key, or bind to 127.0.0.1.")
        current = self.status()
        if current.state in ("starting", "ready"):
            raise ServerError(f"An API server is already running (pid {current.pid}, port {current.port}): "
                              "stop it first.")
        if not port_free(host, int(port)):
            raise ServerError(f"Port {port} on {host} is in use: choose another port.")
        from app.chat.backends import backend_problem

        if problem := backend_problem(backend, model):
            raise ServerError(problem)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = api_command(self.python, model, adapters, host, int(port), backend, extra)
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        env.pop("FTSTUDIO_API_KEY", None)
        if api_key:
            env["FTSTUDIO_API_KEY"] = api_key
        with open(self.log_file, "wb") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=os.getcwd(), env=env)
        record = {"pid": proc.pid, "pgid": proc.pid, "host": host, "port": int(port), "started": time.time(),
                  "models": [model or "SmolLM2-135M-Instruct"] + [n for n, _ in adapters], "has_key": bool(api_key),
                  "backend": backend,
                  "command": cmd}
        write_json_atomic(self.state_file, record)
        self._child = proc  # reaped by stop(); after a UI restart the record is enough
        return self.status()

    def status(self) -> ServerStatus:
        record = self._record()
        if not record:
            return ServerStatus("stopped")
        status = ServerStatus("exited", record.get("pid"), record.get("host", "127.0.0.1"), record.get("port"),
                              record.get("models"), bool(record.get("has_key")), self.log_tail())
        if self._child is not None:
            self._child.poll()  # reap a dead child so it reads as gone
        if not self._alive(record):
            return status
        status.state = "ready" if self._healthy(status) else "starting"
        return status

    def _healthy(self, status: ServerStatus) -> bool:
        try:
            with urllib.request.urlopen(status.base_url.removesuffix("/v1") + "/health", timeout=1.0) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def stop(self) -> bool:
        """SIGTERM the server's group, SIGKILL after a grace period; True if something was running."""
        record = self._record()
        if not record:
            return False
        running = self._alive(record)
        if running:  # SIGTERM, grace, SIGKILL only if still alive, reap: the job manager's rule
            stop_process(record.get("pid"), record.get("pgid"), started=record.get("started"),
                         child=self._child, grace_s=STOP_GRACE_S, ceiling_s=STOP_GRACE_S)
        reap(self._child, timeout=5)
        self._child = None
        self.state_file.unlink(missing_ok=True)
        return running

    def log_tail(self, n_bytes: int = 3000) -> str:
        if not self.log_file.exists():
            return ""
        with open(self.log_file, "rb") as handle:
            handle.seek(max(0, self.log_file.stat().st_size - n_bytes))
            return handle.read().decode("utf-8", errors="replace")
