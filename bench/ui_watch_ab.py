"""Does watching a run slow it down? Measured inside one run: the page open on the Train tab, then closed,
then open again, while the same worker trains.

    .venv/bin/python bench/ui_watch_ab.py [--blocks 4] [--window 40] [--gap 10] [--repo PATH]

`bench/ui_overhead.py` compares whole runs (CLI against browser), and on a shared 2-core machine whole runs
drift by up to 13% from one to the next: more than the 5% it has to resolve. Here one job is queued with
`ftstudio runs submit` while the studio runs (the worker starts as a browser-started one does), and while it
trains, windows of `--window` seconds alternate between "watching" (a headless Chromium page open on the
Train tab, its curve, status line and run table ticking) and "not watching" (no page), in ABBA blocks so that
a steady drift of the machine cancels out. Each window starts `--gap` seconds after the page opened or closed:
loading the page is a one-off, not watching. Real tokens/s per window come from the run's events.jsonl (the
log events inside it); CPU of the studio process and of Chromium per window from psutil.

Reported: every window, the mean tokens/s watching and not, their ratio, and the ratio per block (each block's
two watching windows over its two others) with its spread, which says how far the ratio can be trusted.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from browser_support import VIEWPORT, Studio, chromium_browser, running_studio  # noqa: E402
from ui_overhead import settle, submit, watcher_cpu  # noqa: E402

ABBA = (True, False, False, True)  # watching, not, not, watching


def log_points(run: Path) -> list[tuple[float, int, int]]:
    """(time, tokens trained so far, step) of each logged step."""
    points = []
    for line in (run / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("kind") == "log" and not event.get("final") and event.get("tokens") is not None:
            points.append((event["t"], event["tokens"], event.get("step") or 0))
    return points


def window_rate(run: Path, start: float, end: float) -> tuple[float, int]:
    """(tokens per second between the first and the last step logged inside [start, end], that last step)."""
    inside = [(t, n, step) for t, n, step in log_points(run) if start <= t <= end]
    if len(inside) < 3:
        raise RuntimeError(f"{run}: {len(inside)} logged steps in a {end - start:.0f} s window; make it longer")
    (t0, n0, _), (t1, n1, step) = inside[0], inside[-1]
    return (n1 - n0) / (t1 - t0), step


def open_train_tab(browser, studio: Studio, name: str):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(120_000)
    page.goto(studio.url, timeout=240_000)
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#train-runs")
    page.wait_for_function(f"document.querySelector('#train-runs')?.innerText.includes({json.dumps(name)})")
    return page


def wait_training(run: Path, steps: int = 3, limit_s: float = 600) -> None:
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if (run / "events.jsonl").exists() and len(log_points(run)) >= steps:
            return
        state = json.loads((run / "state.json").read_text()) if (run / "state.json").exists() else {}
        if state.get("state") in ("finished", "failed", "stopped"):
            raise RuntimeError(f"{run.name} ended before the windows: {state}")
        time.sleep(1)
    raise RuntimeError(f"{run.name} did not log {steps} steps within {limit_s:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4, help="ABBA blocks (4 windows each)")
    parser.add_argument("--window", type=float, default=40.0, help="seconds measured per window")
    parser.add_argument("--gap", type=float, default=10.0, help="seconds left out after the page opens or closes")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose studio and worker run")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    import browser_support

    repo = args.repo.resolve()
    browser_support.REPO = repo
    windows: list[dict] = []
    with running_studio("ftstudio-ui-watch-ab-") as studio, chromium_browser() as browser:
        settle()
        name = "watched"
        run = submit(repo, studio.root, studio, name, 100_000)  # stopped with the studio when the windows are done
        wait_training(run)
        page = None
        for block in range(args.blocks):
            for watching in ABBA:
                if watching and page is None:
                    page = open_train_tab(browser, studio, name)
                elif not watching and page is not None:
                    page.close()
                    page = None
                time.sleep(args.gap)
                cpu0, t0 = watcher_cpu(studio), time.time()
                time.sleep(args.window)
                cpu1, t1 = watcher_cpu(studio), time.time()
                rate, step = window_rate(run, t0, t1)
                window = {"block": block, "watching": watching, "tokens_s": rate, "step": step} | {
                    k: (cpu1[k] - cpu0[k]) / (t1 - t0) for k in cpu1}
                windows.append(window)
                print(f"block {block + 1} {'watching' if watching else 'no page ':8}  "
                      f"{window['tokens_s']:7.1f} tokens/s   studio {window['studio']:.3f} cores, "
                      f"Chromium {window['chromium']:.3f} cores   (to step {step})", flush=True)
    report(windows, repo)
    return 0


def report(windows: list[dict], repo: Path) -> None:
    def mean(watching: bool, key: str = "tokens_s", block: int | None = None) -> float:
        return statistics.mean(w[key] for w in windows
                               if w["watching"] == watching and (block is None or w["block"] == block))

    ratio = mean(True) / mean(False)
    per_block = [mean(True, block=b) / mean(False, block=b) for b in sorted({w["block"] for w in windows})]
    spread = statistics.stdev(per_block) / len(per_block) ** 0.5 if len(per_block) > 1 else float("nan")
    print(f"\ncode: {repo}\nwatching  mean {mean(True):7.1f} tokens/s   studio {mean(True, 'studio'):.3f} + "
          f"Chromium {mean(True, 'chromium'):.3f} cores\n"
          f"no page   mean {mean(False):7.1f} tokens/s   studio {mean(False, 'studio'):.3f} + "
          f"Chromium {mean(False, 'chromium'):.3f} cores\n"
          f"watching / no page = {ratio:.3f}  ({abs(1 - ratio) * 100:.1f}% {'slower' if ratio < 1 else 'faster'} "
          f"while the Train tab is open)\n"
          f"per ABBA block: {[round(r, 3) for r in per_block]}  mean {statistics.mean(per_block):.3f} "
          f"± {spread:.3f} (standard error)")


if __name__ == "__main__":
    sys.exit(main())
