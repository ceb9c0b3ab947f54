"""LoRA merge and the export pipeline (run folder -> merged safetensors / GGUF + Modelfile + report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_export_helpers import build_tiny_model, logits_of

from app.export import llamacpp, pipeline
from app.export.errors import ExportError
from app.export.merge import merge_adapter
from app.export.pipeline import export

IDS = [1, 504, 2365, 6354, 16438, 27003, 338, 260, 3521, 2]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory, smol_tokenizer: Any) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("base") / "tiny-base", "llama", smol_tokenizer, train_steps=20)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, base_dir: Path, smol_tokenizer: Any) -> tuple[Path, Any]:
    """runs/lumi/adapter/: a random-init LoRA (non-zero B) saved with the tokenizer, as training leaves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(base, config).eval()
    run = tmp_path_factory.mktemp("runs") / "lumi"
    peft_model.save_pretrained(str(run / "adapter"))
    smol_tokenizer.save_pretrained(str(run / "adapter"))
    with torch.no_grad():
        expected = peft_model(torch.tensor([IDS])).logits[0]
    return run, expected


def test_adapter_config_points_at_absolute_base(run_dir: tuple[Path, Any], base_dir: Path) -> None:
    config = json.loads((run_dir[0] / "adapter" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).resolve() == base_dir.resolve()


def test_merge_gives_the_peft_model_logits(run_dir: tuple[Path, Any], base_dir: Path, tmp_path: Path) -> None:
    run, expected = run_dir
    steps: list[tuple[float, str]] = []
    out = merge_adapter(run / "adapter", tmp_path / "merged", progress=lambda f, m: steps.append((f, m)))
    merged = logits_of(out, IDS)
    assert torch.allclose(merged, expected, atol=1e-4), (merged - expected).abs().max()
    assert not torch.allclose(logits_of(base_dir, IDS), expected, atol=1e-3), "the adapter must change the model"

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert list(out.glob("*.safetensors")) and not list(out.glob("adapter_*"))
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    text = " ".join(m for _, m in steps)
    for word in ("loading base", "applying adapter", "merging", "saving"):
        assert word in text


def test_merge_shards_and_casts(run_dir: tuple[Path, Any], tmp_path: Path) -> None:
    out = merge_adapter(run_dir[0] / "adapter", tmp_path / "m", max_shard_size="3MB", dtype="bfloat16")
    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_merge_refuses_missing_or_prequantized_base(run_dir: tuple[Path, Any], base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="base_dir="):
        merge_adapter(run_dir[0] / "adapter", tmp_path / "m", base_dir=tmp_path / "nowhere")
    quantized = tmp_path / "qbase"
    quantized.mkdir()
    config = json.loads((base_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="pre-quantized"):
        merge_adapter(run_dir[0] / "adapter", tmp_path / "m", base_dir=quantized)


def test_full_model_is_copied(base_dir: Path, tmp_path: Path) -> None:
    out = merge_adapter(base_dir, tmp_path / "copy")
    assert (out / "model.safetensors").read_bytes() == (base_dir / "model.safetensors").read_bytes()
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def test_export_run_to_safetensors(run_dir: tuple[Path, Any], tmp_path: Path) -> None:
    report = export(run_dir[0], fmt="safetensors", output_dir=tmp_path / "st")
    assert report["passed"] and report["name"] == "lumi" and report["adapter"]
    files = {f["path"] for f in report["files"]}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= files
    assert json.loads((tmp_path / "st" / "export_report.json").read_text())["format"] == "safetensors"
    assert torch.allclose(logits_of(tmp_path / "st", IDS), run_dir[1], atol=1e-4)


def test_export_run_to_gguf(run_dir: tuple[Path, Any], tmp_path: Path) -> None:
    steps: list[float] = []
    out = tmp_path / "gguf"
    report = export(run_dir[0], fmt="gguf", quant="f16", output_dir=out, progress=lambda f, m: steps.append(f))
    assert report["passed"] and report["fidelity"]["agreement"] >= 0.99
    assert report["gguf"]["architecture"] == "llama" and report["gguf"]["pre_tokenizer"] == "smollm"
    assert report["gguf"]["chat_template"] and report["gguf"]["eos_token_id"] == 2
    files = {f["path"]: f["bytes"] for f in report["files"]}
    assert files["lumi-f16.gguf"] > 0 and "Modelfile" in files and "merged/model.safetensors" in files
    assert set(report["timings_s"]) >= {"merge", "gguf", "fidelity"}
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./lumi-f16.gguf" in modelfile and "<|im_start|>" in modelfile
    assert json.loads((out / "export_report.json").read_text())["passed"] is True
    assert steps == sorted(steps) and steps[-1] == 1.0


def test_export_below_target_is_reported_and_raised(
    base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = {
        "agreement": 0.5,
        "ppl_reference": 10.0,
        "ppl_gguf": 20.0,
        "ppl_change_pct": 100.0,
        "target": 0.99,
        "passed": False,
        "backend": "test",
        "n_tokens": 10,
        "quant": "f16",
        "tokenizer_match": None,
    }
    monkeypatch.setattr(pipeline, "check_fidelity", lambda *a, **k: failing)
    with pytest.raises(ExportError, match="failed its fidelity check"):
        export(base_dir, fmt="gguf", quant="f16", output_dir=tmp_path / "bad")
    report = json.loads((tmp_path / "bad" / "export_report.json").read_text())
    assert report["passed"] is False and report["fidelity"]["agreement"] == 0.5
    assert "fidelity" in report["error"]


def test_export_user_errors_fail_fast(base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExportError, match="unknown export format"):
        export(base_dir, fmt="onnx", output_dir=tmp_path / "x")
    with pytest.raises(ExportError, match="not a folder"):
        export(tmp_path / "missing", fmt="gguf", output_dir=tmp_path / "x")
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    with pytest.raises(ExportError, match=r"finetune-studio\[gguf-quant\]"):
        export(base_dir, fmt="gguf", quant="q4_k_m", output_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists(), "nothing is written before the request is validated"
