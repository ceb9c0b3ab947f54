"""The training worker and what it needs: recipes, model setup, callbacks, launch, memory estimate.

OpenMP threads that spin while waiting (libgomp's default, ACTIVE) make CPU training up to ~9x slower
when another process competes for the cores (measured on 2 cores: a LoRA step of 256 tokens took 27 s
instead of 3 s). PASSIVE waiting costs next to nothing on an idle machine. The variable must be set
before torch loads its OpenMP runtime, so it is set here, on first import of app.train (the worker
imports it before torch); the job manager imports it too, so every worker it spawns inherits it.
Set OMP_WAIT_POLICY yourself to override.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
