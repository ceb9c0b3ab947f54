"""Fast checks of how a job becomes a model and trainer arguments (no training)."""

from __future__ import annotations

import pytest
import torch

from app.config import PREF_LOSSES, JobConfig
from app.train import model_setup, recipes


def test_qlora_4bit_is_nf4_double_quantized_with_fp32_compute_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = model_setup.quantization_config(JobConfig(quantization_bit=4))
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float32
    assert model_setup.quantization_config(JobConfig(quantization_bit=8)).load_in_8bit
    assert model_setup.quantization_config(JobConfig()) is None


def test_qlora_computes_in_bf16_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert model_setup.quantization_config(JobConfig(quantization_bit=4)).bnb_4bit_compute_dtype == torch.bfloat16
    assert model_setup.quantized_compute_dtype(JobConfig(quantization_bit=4, fp16=True)) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # pre-Ampere
    assert model_setup.quantized_compute_dtype(JobConfig(quantization_bit=4)) == torch.float16


@pytest.mark.parametrize("loss", PREF_LOSSES)
def test_pref_loss_names_are_trl_loss_types(loss, tmp_path):
    from trl import DPOConfig

    config = DPOConfig(output_dir=str(tmp_path), loss_type=loss, use_cpu=True, bf16=False, report_to=[])
    assert config.loss_type == [loss]


def test_trainable_weights_go_back_to_fp32():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
    model[1].requires_grad_(False)
    recipes.keep_trainable_fp32(model)
    assert model[0].weight.dtype == torch.float32 and model[1].weight.dtype == torch.bfloat16


def test_trainer_arguments(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = recipes.trainer_arguments(JobConfig(), tmp_path / "checkpoints", has_eval=True)
    assert args["eval_on_start"] is True and args["eval_strategy"] == "steps"
    assert "fsdp" not in args and "deepspeed" not in args and "ddp_find_unused_parameters" not in args
    assert recipes.trainer_arguments(JobConfig(), tmp_path, has_eval=False)["eval_on_start"] is False

    from app.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "force_fsdp_on_cpu", lambda: None)  # no global patch in this process
    args = recipes.trainer_arguments(JobConfig(distributed_strategy="fsdp", num_processes=2), tmp_path, False)
    assert args["fsdp"] == "full_shard auto_wrap" and args["ddp_find_unused_parameters"] is False


def test_openmp_waits_passively_only_on_a_busy_machine(monkeypatch):
    import sys

    from app.train import threads

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "set by the user" in threads.choose_omp_wait_policy()
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert "torch already loaded" in threads.choose_omp_wait_policy()  # too late to matter
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(threads, "other_processes_cpu", lambda: 0.1)
    assert "spin" in threads.choose_omp_wait_policy() and "OMP_WAIT_POLICY" not in threads.os.environ
    monkeypatch.setattr(threads, "other_processes_cpu", lambda: 1.5)
    assert "passively" in threads.choose_omp_wait_policy()
    assert threads.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")


def test_other_processes_cpu_is_a_number_of_cores():
    import os

    from app.train.threads import other_processes_cpu

    assert 0.0 <= other_processes_cpu(0.05) <= (os.cpu_count() or 1) + 0.5


def test_a_busy_process_counts_but_a_burst_does_not():
    """Sustained work of another process is a busy machine; a burst (the studio and the browser answering
    the Start click) is not: the probe takes the least of three samples."""
    import subprocess
    import sys

    from app.train.threads import other_processes_cpu

    quiet = other_processes_cpu()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert other_processes_cpu() >= 0.5  # one core spinning, in every sample
    finally:
        busy.kill()
        busy.wait()
    readings = []
    for _ in range(3):  # the machine's other work (`make test` runs two test processes) may change meanwhile
        burst = subprocess.Popen([sys.executable, "-c",
                                  "import time\nt = time.time()\nwhile time.time() - t < 0.25: pass"])
        try:
            reading = other_processes_cpu()  # the first sample sees a core spinning, the last one does not
        finally:
            burst.wait()
        quiet = min(quiet, other_processes_cpu())
        readings.append((reading, quiet))
        if reading < quiet + 0.5:
            break
    assert reading < quiet + 0.5, readings


def test_the_studio_reading_before_the_click_outweighs_a_burst(monkeypatch):
    """A worker the studio started takes the least of its own samples and the studio's reading of the seconds
    before (LOAD_ENV): a Start click's burst alone does not make it wait passively, lasting load does."""
    import sys

    from app.train import threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in a worker, before torch loads
    monkeypatch.setattr(threads, "other_processes_cpu", lambda: 1.4)  # the click: studio and browser busy
    monkeypatch.setenv(threads.LOAD_ENV, "0.12")
    said = threads.choose_omp_wait_policy()
    assert "spin" in said and "0.1 over the 10 s before" in said and "OMP_WAIT_POLICY" not in threads.os.environ
    monkeypatch.setenv(threads.LOAD_ENV, "1.30")  # another job was already training
    assert "passively" in threads.choose_omp_wait_policy()
    assert threads.os.environ.pop("OMP_WAIT_POLICY") == "PASSIVE"  # not monkeypatch: it would put it back


def test_the_load_window_measures_the_seconds_before():
    import subprocess
    import sys
    import time

    from app.train.threads import LOAD_ENV, MIN_WINDOW_S, LoadWindow

    window = LoadWindow()
    window.sample()
    assert window.cores() is None and window.env() == {}  # too short a history to say anything
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(4):
            time.sleep(MIN_WINDOW_S / 3)
            window.sample()
        assert window.cores() >= 0.5  # one core spinning all along
        assert float(window.env()[LOAD_ENV]) >= 0.5
    finally:
        busy.kill()
        busy.wait()
