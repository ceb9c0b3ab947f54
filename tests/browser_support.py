"""What the browser tests share: Chromium's launch flags and the studio as a restartable subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "docs" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
                 "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 1000}
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Studio:
    """`python -m app.cli webui` on a free port, a copy of the repo's catalogue and a fresh runs folder;
    restartable on the same port and folders."""

    def __init__(self, root: Path):
        self.root = root
        self.runs = root / "runs"
        self.datasets = root / "datasets"
        self.datasets.mkdir(parents=True)
        shutil.copy(REPO / "dataset_info.json", self.datasets / "dataset_info.json")
        shutil.copytree(REPO / "data", self.datasets / "data")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
                            "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        log = open(self.root / "webui.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "webui", "--port", str(self.port), "--runs-dir", str(self.runs),
             "--dataset-dir", str(self.datasets)],
            cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"webui exited: {(self.root / 'webui.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"webui did not answer within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """End the UI process group, and an API server a failed test may have left behind."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        record = self.runs / ".api-server" / "server.json"
        if record.is_file():
            try:
                os.killpg(json.loads(record.read_text())["pgid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError, KeyError, ValueError):
                pass

    def kill_workers(self) -> None:
        for state_file in self.runs.glob("*/state.json"):
            pgid = json.loads(state_file.read_text()).get("pgid")
            if pgid:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
