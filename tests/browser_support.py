"""What the browser tests share: Chromium's launch flags, the studio as a restartable subprocess, a page
opened on it, and the few ways the tests fill a field or wait for a text."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

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


def playwright_or_skip() -> ModuleType:
    """playwright.sync_api, or a module-level skip when Debian's chromium or playwright is missing
    (`make test` installs both, so CI runs every browser test)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium; Debian's chromium is required)",
                    allow_module_level=True)
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@contextmanager
def running_studio(prefix: str, prepare: Callable[[Studio], None] | None = None) -> Iterator[Studio]:
    """A started studio in a fresh folder, ended with its workers and removed afterwards. Not
    tmp_path_factory: pytest prunes old base folders, and other pytest sessions on the machine (same user)
    would delete ours while the UI still serves from it."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    server = Studio(root)
    try:
        if prepare:
            prepare(server)
        server.start()
        yield server
    finally:
        server.stop()
        server.kill_workers()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def chromium_browser() -> Iterator:
    sync_api = playwright_or_skip()
    with sync_api.sync_playwright() as play:
        browser = play.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def studio_page(studio: Studio, ready: str = "#tab-model", state: str = "attached") -> Iterator:
    """One page on the studio, once `ready` is there (the UI has rendered)."""
    with chromium_browser() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(60_000)
        page.goto(studio.url, timeout=120_000)
        page.wait_for_selector(ready, state=state, timeout=120_000)
        yield page


def set_value(page, elem_id: str, value: object) -> None:
    """Type into the input or text area of the component #elem_id and leave it (Gradio applies on blur)."""
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    for _ in range(3):  # a field just shown (an accordion opening) can take its initial value again once
        box.fill(str(value))
        box.press("Tab")
        page.wait_for_timeout(150)
        if box.input_value() == str(value):
            return


def pick(page, elem_id: str, option: str, tries: int = 3) -> None:
    """Choose `option` in the dropdown #elem_id (typed into its filter, then clicked) and wait until the input
    shows it. Under load the open list of a dropdown in a just-opened accordion was once never still enough
    for Playwright's click in 60 s: close the list and choose again, as a user would."""
    box = page.locator(f"#{elem_id} input").first
    for attempt in range(tries):
        try:
            box.click(timeout=30_000)
            box.fill(option)
            page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click(timeout=20_000)
            page.wait_for_function("([id, v]) => document.querySelector(`#${id} input`).value === v",
                                   arg=[elem_id, option], timeout=10_000)
            return
        except Exception as error:  # playwright's TimeoutError
            if type(error).__name__ != "TimeoutError" or attempt == tries - 1:
                raise
            page.keyboard.press("Escape")


def wait_text(page, elem_id: str, text: str, timeout: int = 60_000) -> None:
    """Wait until #elem_id's text contains `text`; on time-out say what it showed instead."""
    try:
        page.wait_for_function("([id, t]) => document.querySelector(`#${id}`).innerText.includes(t)",
                               arg=[elem_id, text], timeout=timeout)
    except Exception as error:  # playwright's TimeoutError
        if type(error).__name__ != "TimeoutError":
            raise
        raise AssertionError(f"#{elem_id} never showed {text!r}: {page.inner_text(f'#{elem_id}')!r}") from None
