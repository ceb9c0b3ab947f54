"""Start-up of a training process: import only what the job uses.

`peft` imports bitsandbytes whenever it is installed, and bitsandbytes pulls in torch's compiler stack
(torch._inductor) at import: measured with `python -X importtime`, that is about a third of importing
peft (8.9 of 26 s on the loaded 2-core build machine, 2-3 s on a quiet one). A job that neither
quantizes nor uses an 8-bit optimizer never touches bitsandbytes, so the worker process marks it
absent before anything imports it; `importlib.util.find_spec` then reports it missing and transformers
and PEFT take their plain paths.

Only the `ftstudio train` process does this (app.cli), never a process that goes on to run other jobs.
"""

from __future__ import annotations

import sys

from app.config import JobConfig


def needs_bitsandbytes(job: JobConfig) -> bool:
    return job.quantization_bit is not None or "8bit" in job.optim


def skip_unused_imports(job: JobConfig) -> list[str]:
    """Mark optional packages this job never uses as absent (before they are imported); returns them."""
    skipped = []
    if not needs_bitsandbytes(job) and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment] - import raises, find_spec is None
        skipped.append("bitsandbytes")
    return skipped
