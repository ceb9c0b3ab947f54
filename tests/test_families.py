"""Today's model families through the whole studio, on tiny models built from configs.

For each family: SFT LoRA (loss falls) with the family's LLaMA-Factory template name -> the chat engine
renders the family's official prompt format token for token -> the OpenAI-compatible API answers with
that prompt -> merge -> GGUF (the in-house writer for llama/qwen2/mistral, llama.cpp's converter for
qwen3/gemma3/phi3) with the fidelity check passing, and the chat template carried into the GGUF.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from family_support import FAMILIES, QUESTION, SYSTEM, build_family_model
from test_train_support import make_tiny_catalogue, run_in_process, step_logs

from app.config import JobConfig
from app.train.runfolder import RunFolder

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    return make_tiny_catalogue(tmp_path_factory.mktemp("families-data"))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_train_chat_api_merge_gguf(name: str, tmp_path: Path, catalogue: Path) -> None:
    from fastapi.testclient import TestClient

    from app.chat.engine import ChatEngine
    from app.export.gguf_writer import gguf_metadata
    from app.export.pipeline import export
    from app.serve.api import create_app

    family = FAMILIES[name]
    base = build_family_model(tmp_path / "base", family)
    run_dir = tmp_path / "run"
    job = JobConfig(model_name_or_path=str(base), template=family.template, enable_thinking=family.enable_thinking,
                    dataset="tiny", dataset_dir=str(catalogue), cutoff_len=96, per_device_train_batch_size=4,
                    gradient_accumulation_steps=1, logging_steps=1, save_steps=1000, learning_rate=1e-2, max_steps=4,
                    lora_rank=8, output_dir=str(run_dir))
    assert run_in_process(job) == 0, RunFolder(run_dir).tail_log()
    losses = [e["loss"] for e in step_logs(RunFolder(run_dir).events.read_all())]
    assert losses[-1] < losses[0]

    # chat: the prompt the engine feeds the model is the family's official format, token for token
    engine = ChatEngine(model=str(base))
    engine.add_adapter("tuned", run_dir)
    tokenizer = engine.tokenizer_for("tuned")
    expected = tokenizer(family.prompt, add_special_tokens=False).input_ids
    got = engine.prompt_ids(MESSAGES, model="tuned")
    assert tokenizer.convert_ids_to_tokens(got) == tokenizer.convert_ids_to_tokens(expected)
    for special in (s for s in family.specials if s in family.prompt):
        assert tokenizer.convert_tokens_to_ids(special) in got  # one token, not split into pieces
    reply = engine.generate(MESSAGES, model="tuned", max_new_tokens=4)
    assert reply.prompt_tokens == len(expected) and 1 <= reply.completion_tokens <= 4

    # API: the same prompt through the OpenAI-compatible server
    client = TestClient(create_app(engine, api_key=""))
    response = client.post("/v1/chat/completions", json={"model": "tuned", "messages": MESSAGES, "max_tokens": 3})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == len(expected)

    # merge -> GGUF, checked against the merged model
    report = export(run_dir, fmt="gguf", quant="f16", output_dir=tmp_path / "export")
    assert report["passed"], report
    assert report["gguf"]["architecture"] == family.gguf_arch
    assert report["fidelity"]["agreement"] >= 0.99
    meta = gguf_metadata(report["gguf"]["path"])
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert "tokenizer.chat_template" in meta
