"""Does watching a run in the browser slow it down? The same short job from the CLI and from the Train
tab with the page open (live curve, status line, run table), one after the other, interleaved.

    .venv/bin/python bench/ui_overhead.py [--steps 24] [--repeat 2] [--repo PATH] [--queued]

Each round: `ftstudio train job.yaml` in a child process (the studio paused, as if not running), then the same job
started by clicking Start in headless Chromium (Playwright + /usr/bin/chromium) with the Train tab left
open until the run ends. Both are the same worker on the same job (embedded SmolLM2-135M-Instruct,
identity set, LoRA, batch 2, cutoff 256, logging every step). Reported: real tokens/s of each run
from its events.jsonl (tokens trained between the third logged step and the last, over that time),
their means, and the ratio browser / CLI; and, since on a shared machine tokens/s drift more than the
effect being measured, the CPU the watching itself costs: CPU seconds used by the studio process
(without its workers) and by Chromium while the run trains, per second of training, in cores.
`--queued` adds a third run per round, queued with `ftstudio runs submit` and no page open (the worker starts
as a browser-started one does). `--repo` runs the studio (and the worker) from another
checkout, e.g. the code before a change, for a before/after on the same machine.

The machine is shared and its speed drifts: rounds alternate CLI and browser, and repeat; each run starts
once the machine is quiet (the previous worker may still be saving after its run says "finished").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, Studio, set_value  # noqa: E402

JOB = {"dataset": "identity", "cutoff_len": 256, "per_device_train_batch_size": 2,
       "gradient_accumulation_steps": 1, "learning_rate": 5e-4, "logging_steps": 1, "save_steps": 1000,
       }


def tokens_per_s(run: Path) -> float:
    logs = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    logs = [e for e in logs if e.get("kind") == "log" and not e.get("final") and e.get("tokens") is not None]
    if len(logs) < 4:
        raise RuntimeError(f"{run}: too few log events to measure")
    first, last = logs[2], logs[-1]  # skip the warm-up steps
    return (last["tokens"] - first["tokens"]) / (last["t"] - first["t"])


def omp_policy(run: Path) -> str:
    """What the worker's OpenMP probe chose (app/train/threads.py), from its log."""
    log = run / "worker.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return next((line.split(": ", 1)[-1] for line in lines if "OpenMP" in line), "?")


def env_for(repo: Path) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(repo), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}


def settle(limit_s: float = 60.0, quiet_cores: float = 0.3) -> None:
    """Wait (at most limit_s) until the machine is quiet: a run counts as finished when its state says so,
    and its worker may still be saving and exiting, which the next run's OpenMP probe would see as load."""
    import psutil

    deadline = time.time() + limit_s
    while time.time() < deadline and psutil.cpu_percent(interval=1.0) / 100 * psutil.cpu_count() >= quiet_cores:
        pass


def run_cli(repo: Path, root: Path, name: str, steps: int, studio: Studio) -> float:
    """The job from the CLI with the studio paused (SIGSTOP): a user who trains from the CLI has no studio
    running, and its idle polling would slow this side too."""
    settle()
    os.kill(studio.proc.pid, signal.SIGSTOP)
    try:
        return _run_cli(repo, root, name, steps)
    finally:
        os.kill(studio.proc.pid, signal.SIGCONT)


def write_job(root: Path, name: str, steps: int, output_dir: Path) -> Path:
    """The bench's job as a YAML file for the CLI sides (the browser side types the same keys)."""
    job = root / f"{name}.yaml"
    keys = JOB | {"max_steps": steps, "dataset_dir": str(root / "datasets"), "output_dir": str(output_dir)}
    job.write_text("".join(f"{k}: {v}\n" for k, v in keys.items()))
    return job


def _run_cli(repo: Path, root: Path, name: str, steps: int) -> float:
    job = write_job(root, name, steps, root / "runs" / name)
    subprocess.run([sys.executable, "-m", "app.cli", "train", str(job)], cwd=root, env=env_for(repo), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tokens_per_s(root / "runs" / name)


def watcher_cpu(studio: Studio) -> dict[str, float]:
    """CPU seconds used so far by the studio process itself (not its workers) and by every Chromium process."""
    import psutil

    def cpu(proc: psutil.Process) -> float:
        try:
            times = proc.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return 0.0

    chromium = [p for p in psutil.Process().children(recursive=True) if "chrom" in p.name().lower()]
    return {"studio": cpu(psutil.Process(studio.proc.pid)), "chromium": sum(cpu(p) for p in chromium)}


def submit(repo: Path, root: Path, studio: Studio, name: str, steps: int) -> Path:
    """Queue the bench's job with `ftstudio runs submit` into the running studio's runs folder; its run folder."""
    job = write_job(root, name, steps, studio.runs / name)
    subprocess.run([sys.executable, "-m", "app.cli", "runs", "--runs-dir", str(studio.runs), "submit", str(job)],
                   cwd=root, env=env_for(repo), check=True, stdout=subprocess.DEVNULL)
    return studio.runs / name


def run_queued(repo: Path, root: Path, studio: Studio, name: str, steps: int) -> float:
    """The job queued with `ftstudio runs submit` while the studio runs with no page open: the worker starts
    as a browser-started one does (app.jobs.manager), so this side separates the start from the watching."""
    settle()
    submit(repo, root, studio, name, steps)
    state_file, deadline = studio.runs / name / "state.json", time.time() + 1800
    while time.time() < deadline:
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        if state.get("state") in ("finished", "failed", "stopped"):
            break
        time.sleep(1)
    if state.get("state") != "finished":
        raise RuntimeError(f"queued run {name} ended {state}")
    return tokens_per_s(studio.runs / name)


def same_job(cli_run: Path, ui_run: Path) -> None:
    """Both sides must train the same job: the keys where the browser's job.yaml differs from the CLI's."""
    import yaml

    cli, ui = (yaml.safe_load((run / "job.yaml").read_text()) for run in (cli_run, ui_run))
    differ = {k: (cli.get(k), ui.get(k)) for k in sorted(set(cli) | set(ui))
              if k != "output_dir" and cli.get(k) != ui.get(k)}
    if differ:
        raise RuntimeError(f"the browser trained another job than the CLI (key: (CLI, browser)): {differ}")


def run_browser(browser, studio: Studio, name: str, steps: int, costs: list[dict[str, float]]) -> float:
    settle()
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(120_000)
    page.goto(studio.url, timeout=240_000)
    page.wait_for_selector("#model-load", state="visible", timeout=240_000)
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#group-basic")
    fields = {k: v for k, v in JOB.items() if k not in ("dataset", "save_steps", "logging_steps")}
    for key, value in (fields | {"max_steps": steps}).items():
        set_value(page, f"field-{key}", value)
    page.get_by_text("Advanced", exact=True).click()
    page.wait_for_timeout(500)  # a field of an accordion just opened can take its initial value back once
    for key, value in (("logging_steps", 1), ("save_steps", 1000), ("output_dir", name)):
        set_value(page, f"field-{key}", value)
    page.wait_for_timeout(5_000)  # the memory estimate and other replies to the typing settle first
    idle_cpu, idle_t = watcher_cpu(studio), time.time()  # the same page with nothing running: the floor
    page.wait_for_timeout(10_000)
    idle_end = watcher_cpu(studio)
    idle = {f"idle_{k}": (idle_end[k] - idle_cpu[k]) / (time.time() - idle_t) for k in idle_end}
    page.click("#train-start")
    run = studio.runs / name
    deadline = time.time() + 1800
    start_cpu, start_t = None, 0.0
    while time.time() < deadline:  # the page stays open on the Train tab, its curve updating
        state = json.loads((run / "state.json").read_text()) if (run / "state.json").exists() else {}
        if state.get("state") in ("finished", "failed", "stopped"):
            break
        events = run / "events.jsonl"
        if start_cpu is None and events.exists() and '"kind": "log"' in events.read_text():
            start_cpu, start_t = watcher_cpu(studio), time.time()  # from the first step on: watching, not setup
        page.wait_for_timeout(1000)
    if start_cpu is not None:
        end_cpu, wall = watcher_cpu(studio), time.time() - start_t
        costs.append({k: (end_cpu[k] - start_cpu[k]) / wall for k in end_cpu} | idle)
    page.close()
    if state.get("state") != "finished":
        raise RuntimeError(f"browser run {name} ended {state}")
    return tokens_per_s(run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose studio and worker run")
    parser.add_argument("--queued", action="store_true",
                        help="a third run per round: queued with `ftstudio runs submit`, no page open")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a kill still stops the studio and its workers
    import browser_support
    from playwright.sync_api import sync_playwright

    repo = args.repo.resolve()
    browser_support.REPO = repo  # the studio subprocess (and the workers it starts) run this checkout
    root = Path(tempfile.mkdtemp(prefix="ftstudio-ui-overhead-"))
    studio = Studio(root)
    cli, ui, costs, queued = [], [], [], []
    try:
        studio.start()
        with sync_playwright() as play:
            browser = play.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for i in range(args.repeat):
                cli.append(run_cli(repo, root, f"cli-{i}", args.steps, studio))
                print(f"round {i + 1}: CLI      {cli[-1]:7.1f} tokens/s   ({omp_policy(root / 'runs' / f'cli-{i}')})",
                      flush=True)
                ui.append(run_browser(browser, studio, f"ui-{i}", args.steps, costs))
                same_job(root / "runs" / f"cli-{i}", studio.runs / f"ui-{i}")
                cost = costs[-1] if costs else {}
                print(f"round {i + 1}: browser  {ui[-1]:7.1f} tokens/s   watching used: studio "
                      f"{cost.get('studio', 0):.3f} cores, Chromium {cost.get('chromium', 0):.3f} cores   "
                      f"({omp_policy(studio.runs / f'ui-{i}')})", flush=True)
                if args.queued:
                    queued.append(run_queued(repo, root, studio, f"queued-{i}", args.steps))
                    print(f"round {i + 1}: queued   {queued[-1]:7.1f} tokens/s   (no page; "
                          f"{omp_policy(studio.runs / f'queued-{i}')})", flush=True)
            browser.close()
    finally:
        studio.stop()
        studio.kill_workers()
        shutil.rmtree(root, ignore_errors=True)
    ratio = statistics.mean(ui) / statistics.mean(cli)
    print(f"\ncode: {repo}\nCLI     mean {statistics.mean(cli):7.1f} tokens/s  {[round(x, 1) for x in cli]}\n"
          f"browser mean {statistics.mean(ui):7.1f} tokens/s  {[round(x, 1) for x in ui]}\n"
          f"browser / CLI = {ratio:.3f}  ({abs(1 - ratio) * 100:.1f}% {'slower' if ratio < 1 else 'faster'} with the "
          f"Train tab open)")
    if queued:
        print(f"queued  mean {statistics.mean(queued):7.1f} tokens/s  {[round(x, 1) for x in queued]}  "
              f"(queued / CLI = {statistics.mean(queued) / statistics.mean(cli):.3f})")
    if costs:
        studio_cores = statistics.mean(c["studio"] for c in costs)
        chromium_cores = statistics.mean(c["chromium"] for c in costs)
        print(f"CPU used by watching, while training: studio {studio_cores:.3f} + Chromium {chromium_cores:.3f} "
              f"= {studio_cores + chromium_cores:.3f} cores (the same page idle, nothing running: studio "
              f"{statistics.mean(c['idle_studio'] for c in costs):.3f}, Chromium "
              f"{statistics.mean(c['idle_chromium'] for c in costs):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
