"""The synthetic-data worker: `ftstudio data generate [generate.yaml] [--flags]` runs one job to its end.

    runs/<name>/generate.yaml  state.json  events.jsonl  worker.log  <dataset_name>.json (the rows so far)

Events: `stage` (reading documents, loading the generator, registering), `progress` after each seed
(step = rows kept, total_steps = rows wanted, attempts, dropped {reason: n}, last row), `done`. Stop
(SIGTERM) ends the current generation call, keeps and registers the rows made so far and ends the run
`stopped`; the rows file is rewritten atomically after every kept row, so even a killed run leaves them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from app.config.generate import GenerateConfig
from app.data.catalogue import CATALOGUE_NAME, load_catalogue
from app.data.errors import DataError, Problem, display_path
from app.train.lifecycle import RunContext, setup_logging, supervise
from app.train.runfolder import RunFolder

log = logging.getLogger("ftstudio.generate")


def rows_file(run: RunFolder, config: GenerateConfig) -> Path:
    safe = re.sub(r"[^\w.-]+", "_", config.dataset_name.strip()) or "synthetic"
    return run.path / f"{safe}.json"


def run_generate(config: GenerateConfig) -> int:
    """Run a generation job to its end; returns the exit code (0 finished or stopped, 1 failed)."""
    from app.train.threads import choose_omp_wait_policy

    threads = choose_omp_wait_policy()  # before anything loads torch
    config = config.with_run_folder()
    run = RunFolder(Path(config.output_dir))
    run.create(config)
    setup_logging(run)
    log.info("%s", threads)
    return supervise(run, lambda ctx: _generate(config, run, ctx))


def _check_name_free(config: GenerateConfig) -> None:
    catalogue = Path(config.dataset_dir) / CATALOGUE_NAME
    if config.overwrite or not catalogue.is_file():
        return
    if config.dataset_name in load_catalogue(config.dataset_dir):
        raise DataError([Problem(display_path(catalogue), None, config.dataset_name,
                                 f"a dataset named {config.dataset_name!r} already exists "
                                 "(choose another dataset_name, or set overwrite: true)")])


def _generate(config: GenerateConfig, run: RunFolder, ctx: RunContext) -> tuple[str, str | None]:
    from app.data.documents import load_passages
    from app.data.synth import Synthesizer, register_rows
    from app.datatools.generators import make_generator

    events = ctx.events
    _check_name_free(config)  # before minutes of generation, not after
    passages = []
    if config.document_list and config.recipe != "self_instruct":
        events.append("stage", name="reading", message=f"reading {len(config.document_list)} document source(s)")
        passages = load_passages(config.document_list, config.passage_chars)
        events.append("stage", name="reading", passages=len(passages),
                      message=f"{len(passages)} passages from {len({p.source for p in passages})} file(s)")
    events.append("stage", name="loading_model", message="loading the generator")
    generate, description = make_generator(config)
    events.append("stage", name="generating", message=f"generating {config.num_rows} rows ({config.recipe}) "
                                                      f"with {description}")
    ctx.interruptible = False  # from here a stop ends the current call, then keeps what was made

    def report(progress) -> None:
        event = events.append("progress", **progress.event())
        log.info("rows %d/%d after %d attempts; dropped %s", event["step"], event["total_steps"],
                 event["attempts"], event["dropped"] or "none")

    target = rows_file(run, config)
    synth = Synthesizer(config, generate, passages, target)
    rows = synth.run(should_stop=lambda: ctx.stop.requested, on_progress=report)
    stopped = ctx.stop.requested
    if not rows:
        dropped = ", ".join(f"{n} {why}" for why, n in synth.progress.dropped.items()) or "none"
        if stopped:
            return "stopped", None
        return "failed", (f"no row was kept after {synth.progress.attempts} attempts (dropped: {dropped}); "
                          "try a larger max_new_tokens, another temperature or a larger generator")
    events.append("stage", name="registering", message=f"registering {len(rows)} rows as {config.dataset_name!r}")
    spec = register_rows(target, config)
    events.append("stage", name="registered", dataset=spec.name, rows=len(rows), file=spec.file_name,
                  message=f"{len(rows)} rows registered as {spec.name!r} ({spec.file_name})")
    return ("stopped" if stopped else "finished"), None
