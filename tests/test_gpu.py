"""What only a CUDA GPU can show: a QLoRA (NF4) training run through the real worker, on the GPU.

Marked `gpu`: skipped where torch sees no CUDA device (tests/conftest.py says so in the skip reason),
never faked on CPU. The model is a 2-layer llama built from a config (`tiny_model_dir`), so the test
takes seconds on any GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.config import JobConfig
from app.train.runfolder import RunFolder
from app.train.worker import run_job

pytestmark = pytest.mark.gpu

ROWS = [{"instruction": f"Question {i}: who are you?", "input": "", "output": "I am Lumi, made by Polaris Lab."}
        for i in range(16)]


def test_qlora_trains_on_cuda(tmp_path: Path, tiny_model_dir: Path):
    import torch
    from safetensors.torch import load_file

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lumi.json").write_text(json.dumps(ROWS), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"lumi": {"file_name": "data/lumi.json"}}))
    job = JobConfig(model_name_or_path=str(tiny_model_dir), dataset="lumi", dataset_dir=str(tmp_path),
                    quantization_bit=4, bf16=torch.cuda.is_bf16_supported(), cutoff_len=64, max_steps=8,
                    per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=5e-3,
                    logging_steps=1, save_steps=4, output_dir=str(tmp_path / "runs" / "qlora"))
    assert run_job(job) == 0
    run = RunFolder(tmp_path / "runs" / "qlora")
    events = run.events.read_all()
    ready = next(e for e in events if e["kind"] == "stage" and e["name"] == "model_ready")
    assert ready["device"] == "cuda"
    losses = [e["loss"] for e in events if e["kind"] == "log" and e.get("loss") is not None]
    assert len(losses) == 8 and losses[-1] < losses[0]  # it learns the one answer
    peak = max(e["mem_mb"] for e in events if e["kind"] == "log" and e.get("mem_mb") is not None)
    assert peak > 0  # measured with torch.cuda.max_memory_allocated: the work ran on the GPU
    weights = load_file(str(run.adapter / "adapter_model.safetensors"))
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    assert run.latest_checkpoint().name == "checkpoint-8"
