"""Speed levers keep the loss honest: the same rows give the same loss (and gradients) however the
batch is laid out and whichever head computes it. A tiny random llama with SmolLM2's vocabulary."""

from __future__ import annotations

import pytest
import torch
from test_train_support import load_tiny_model, make_tiny_model

from app.train import loss_head

# three rows of different lengths: prompt tokens (mask 0) then completion tokens (mask 1)
ROWS = [([5, 6, 7, 8, 9, 10, 11], [0, 0, 0, 1, 1, 1, 1]),
        ([12, 13, 14, 15], [0, 0, 1, 1]),
        ([16, 17, 18, 19, 20, 21, 22, 23, 24, 25], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return load_tiny_model(tmp_path_factory.mktemp("tiny") / "m").eval()


def collate(padding_free: bool) -> dict:
    return collate_rows(ROWS, padding_free)


def n_labels(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def grads(model, loss) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("padding_free", [True, False])
def test_completion_only_logits_give_the_full_logit_loss_and_gradients(tiny_model, padding_free):
    batch = collate(padding_free)
    full = tiny_model(**batch).loss  # transformers' own loss over every position's logits
    full_grads = grads(tiny_model, full)
    kept, counted = loss_head.completion_loss(tiny_model, batch)
    assert int(counted) == n_labels(batch) == sum(sum(m) for _, m in ROWS)
    assert kept.item() == pytest.approx(full.item(), rel=1e-6)
    for a, b in zip(full_grads, grads(tiny_model, kept), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # float sums in another order


@pytest.mark.parametrize("padding_free", [True, False])
def test_chunked_head_gives_the_full_logit_loss_and_gradients(tmp_path, monkeypatch, padding_free):
    """The CPU head in chunks (gradient made in the forward pass) against transformers' own loss over
    every position's logits: the same loss and the same gradients of every trainable weight."""
    model = load_tiny_model(tmp_path / "m")
    model.get_output_embeddings().weight.requires_grad_(False)  # LoRA, QLoRA, freeze: the head is frozen
    assert loss_head.chunked_head_reason(model) is None
    batch = collate(padding_free)
    full = model(**batch).loss
    full_grads = grads(model, full)
    monkeypatch.setattr(loss_head, "CHUNK_LOGIT_BYTES", 4 * 4 * model.config.vocab_size)  # 4 rows a chunk: 4 chunks
    chunked, counted = loss_head.chunked_completion_loss(model, batch)
    assert int(counted) == n_labels(batch) == 11
    assert chunked.item() == pytest.approx(full.item(), rel=1e-6)
    chunked_grads = grads(model, chunked)
    assert len(chunked_grads) == len(full_grads) > 10  # the decoder layers (the tied head is frozen)
    for a, b in zip(full_grads, chunked_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # evaluation: the loss alone, divided like the model's
        whole = model(**batch, num_items_in_batch=40).loss
        assert loss_head.chunked_completion_loss(model, batch, 40)[0].item() == pytest.approx(whole.item(), rel=1e-6)


def test_chunked_head_only_where_it_computes_the_same_loss(tmp_path):
    model = load_tiny_model(tmp_path / "m")
    assert "the output head trains" in loss_head.chunked_head_reason(model)  # full fine-tuning: TRL's head
    model.get_output_embeddings().weight.requires_grad_(False)
    assert "several processes" in loss_head.chunked_head_reason(model, processes=2)
    model.config.model_type = "gemma2"  # soft-caps its logits after the head
    assert "gemma2" in loss_head.chunked_head_reason(model)
    # the memory estimate's forecast, before any model loads, says the same in each case
    model.config.model_type = "llama"
    for trains, processes in ((True, 1), (False, 2), (False, 1)):
        model.get_output_embeddings().weight.requires_grad_(trains)
        planned = loss_head.planned_head_reason("llama", trains, processes)
        assert planned == loss_head.chunked_head_reason(model, processes)
    assert loss_head.planned_head_reason("gemma2", False) == "model type 'gemma2' may scale or cap its logits"


def test_label_columns_skip_prompt_and_padding():
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, -100, -100, 9, -100]])
    assert loss_head.label_columns(labels).tolist() == [1, 2]  # position i predicts label i + 1


def test_padded_and_padding_free_batches_give_the_same_loss(tiny_model):
    padded, flat = collate(False), collate(True)
    assert flat["input_ids"].shape[0] == 1 and "position_ids" in flat and "attention_mask" not in flat
    assert padded["input_ids"].shape == (3, 10)
    with torch.no_grad():
        loss_padded = tiny_model(**padded).loss
        loss_flat = tiny_model(**flat).loss
    assert loss_flat.item() == pytest.approx(loss_padded.item(), rel=1e-5)


def test_num_items_in_batch_divides_like_the_model_loss(tiny_model):
    batch = collate(True)
    with torch.no_grad():
        full = tiny_model(**batch, num_items_in_batch=40).loss
        kept, _ = loss_head.completion_loss(tiny_model, batch, num_items_in_batch=40)
    assert kept.item() == pytest.approx(full.item(), rel=1e-6)


def test_compact_fused_head_gives_the_full_logit_log_probs(tmp_path):
    """The DPO head: TRL's fused head restricted to label positions (also on CPU), log-probs only."""
    from transformers import AutoModelForCausalLM

    from app.train.fast_trainers import install_compact_dpo_head

    folder = make_tiny_model(tmp_path / "m")
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    fused = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    install_compact_dpo_head(fused)
    batch = collate(False)
    labels = batch["labels"]
    with torch.no_grad():
        logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        out = fused(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    fused_lm_head=True)
    shifted = labels[:, 1:]
    expected = torch.log_softmax(logits.float(), -1).gather(-1, shifted.clamp(min=0)[..., None])[..., 0]
    expected = expected.masked_fill(shifted == -100, 0)
    torch.testing.assert_close(out.log_probs, expected, rtol=1e-5, atol=1e-5)
    assert out.entropy is not None and not out.entropy.any()  # zeros: DPO's extra metrics are dropped


# -- start-up: parsed once, tokenized rows reused -------------------------------------------------------
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def identity_job(**changes):
    from app.config import JobConfig

    return JobConfig(**({"dataset": "identity", "dataset_dir": str(REPO), "cutoff_len": 128} | changes))


def test_cached_tokenization_equals_fresh(smol_tokenizer, tmp_path, monkeypatch):
    from app.train import data_cache, recipes

    monkeypatch.setenv("FTSTUDIO_CACHE", str(tmp_path / "cache"))
    job = identity_job(val_size=0.1)
    fresh = recipes.prepare_data(job, smol_tokenizer, use_cache=False)
    first = recipes.prepare_data(job, smol_tokenizer)  # a miss: tokenizes and stores
    again = recipes.prepare_data(job, smol_tokenizer)  # a hit
    assert "reused from cache" in again.message and "reused" not in first.message
    for split in ("train", "eval"):
        assert getattr(again, split).to_list() == getattr(fresh, split).to_list()
    assert again.n_rows == fresh.n_rows and len(fresh.train) > 0
    assert len(data_cache.TokenCache().entries()) == 1
    # anything that changes the rows changes the fingerprint
    base = data_cache.fingerprint(job, smol_tokenizer)
    assert data_cache.fingerprint(identity_job(val_size=0.1, cutoff_len=64), smol_tokenizer) != base
    assert data_cache.fingerprint(identity_job(val_size=0.1, max_samples=5), smol_tokenizer) != base
    assert data_cache.fingerprint(identity_job(), smol_tokenizer) != base


def test_cache_key_follows_the_data_file_and_the_cache_is_bounded(smol_tokenizer, tmp_path):
    import json

    from app.data.render import tokenize_sft
    from app.train import data_cache, recipes

    (tmp_path / "data").mkdir()
    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(6)]
    data_file = tmp_path / "data" / "qa.json"
    data_file.write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"qa": {"file_name": "data/qa.json"}}))
    job = identity_job(dataset="qa", dataset_dir=str(tmp_path))
    before = data_cache.fingerprint(job, smol_tokenizer)
    assert len(data_cache.examples_for(job)) == 6
    data_file.write_text(json.dumps(rows[:4]))
    assert data_cache.fingerprint(job, smol_tokenizer) != before  # size and mtime changed
    assert len(data_cache.examples_for(job)) == 4  # parsed again, not the stale rows

    cache = data_cache.TokenCache(tmp_path / "bounded", max_entries=2)
    train, _ = recipes.split_eval(tokenize_sft(data_cache.examples_for(job), smol_tokenizer, 64)[0], job)
    for key in ("a", "b", "c"):
        cache.store(key, data_cache.Cached(train, None, 4, "m"))
    assert [p.name for p in cache.entries()] == ["c", "b"]  # the oldest went
    assert cache.load("a") is None and cache.load("b").train.to_list() == train.to_list()


def test_cpu_runs_one_row_per_micro_batch_with_the_same_update(tiny_model, tmp_path, monkeypatch):
    from app.config import JobConfig
    from app.train import recipes
    from app.train.batching import micro_batches

    job = JobConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2)
    assert micro_batches(job, on_gpu=False) == (1, 8) and micro_batches(job, on_gpu=True) == (4, 2)
    for stage in ("kto", "grpo", "rm"):  # batch-level losses keep their batches
        assert micro_batches(job.replace(stage=stage), on_gpu=False) == (4, 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = recipes.trainer_arguments(job, tmp_path, has_eval=False)
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (1, 8)
    # the batch's loss normalised over all its label tokens = the sum of the rows' (num_items_in_batch)
    batch = collate(True)
    total = n_labels(batch)
    with torch.no_grad():
        whole, _ = loss_head.completion_loss(tiny_model, batch, num_items_in_batch=total)
        rows = [loss_head.completion_loss(tiny_model, single, num_items_in_batch=total)[0]
                for single in (collate_rows([row], True) for row in ROWS)]
    assert sum(r.item() for r in rows) == pytest.approx(whole.item(), rel=1e-5)


def collate_rows(rows, padding_free: bool) -> dict:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)
    return collator([{"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]} for ids, mask in rows])


def test_a_job_without_quantization_skips_bitsandbytes():
    import importlib.util
    import sys

    from app.config import JobConfig
    from app.train.startup import skip_unused_imports

    saved = sys.modules.pop("bitsandbytes", None)  # restored below: other tests load bitsandbytes
    try:
        assert skip_unused_imports(JobConfig(quantization_bit=4)) == []
        assert skip_unused_imports(JobConfig(optim="paged_adamw_8bit")) == []
        assert "bitsandbytes" not in sys.modules
        assert skip_unused_imports(JobConfig()) == ["bitsandbytes"]
        assert importlib.util.find_spec("bitsandbytes") is None  # transformers and PEFT see it absent
    finally:
        sys.modules.pop("bitsandbytes", None)
        if saved is not None:
            sys.modules["bitsandbytes"] = saved


def test_gpu_check_stops_at_once_without_cuda(tmp_path):
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the check would run")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert "no CUDA GPU is visible" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # nothing built before the check


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_head_on_gpu_gives_the_full_logit_loss(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = make_tiny_model(tmp_path / "m")
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda().eval()
    fused = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda().eval()
    loss_head.install_log_prob_head(fused)
    assert loss_head.fused_head_available("cuda")
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in collate(True).items()}
    with torch.no_grad():
        full = reference(**batch).loss
        kept, counted = loss_head.fused_completion_loss(fused, batch)
    assert int(counted) == n_labels(batch)
    assert kept.item() == pytest.approx(full.item(), rel=1e-4)


@pytest.mark.slow
def test_dpo_trains_with_precomputed_reference_and_no_extra_metrics(tmp_path):
    from test_train_support import run_in_process, step_logs

    from app.config import JobConfig
    from app.train.recipes import data_passes
    from app.train.runfolder import RunFolder

    job = JobConfig(model_name_or_path=str(make_tiny_model(tmp_path / "m")), stage="dpo", dataset="preference_demo",
                    dataset_dir=str(REPO), max_samples=8, cutoff_len=128, per_device_train_batch_size=2,
                    gradient_accumulation_steps=1, max_steps=8, learning_rate=1e-3, logging_steps=1,
                    save_steps=1000, output_dir=str(tmp_path / "run"))  # 16 pairs over 8 rows: two passes
    assert data_passes(job, 8) == 2.0 and data_passes(job.replace(max_steps=-1, num_train_epochs=1.0), 8) == 1.0
    assert run_in_process(job) == 0  # LoRA over two passes: the reference log-probs are precomputed
    run = RunFolder(tmp_path / "run")
    logs = step_logs(run.events.read_all())
    assert [e["step"] for e in logs] == list(range(1, 9))
    assert all("rewards_margins" in e and "entropy" not in e and "mean_token_accuracy" not in e for e in logs)
    assert logs[-1]["rewards_margins"] > logs[0]["rewards_margins"]
