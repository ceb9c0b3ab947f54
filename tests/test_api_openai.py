"""The OpenAI-compatible server over real HTTP, driven by the official openai client and httpx.

Fast tests run a tiny random 2-layer model (the embedded model's tokenizer) so the whole OpenAI surface
is exercised in seconds; a gated fake backend pins down admission (429) and disconnects. The `slow`
tests serve the embedded SmolLM2-135M plus a random LoRA adapter: sixteen concurrent clients, greedy
answers equal to the same request alone, one burst mixing base and adapter requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from serving_support import TOOL_TEMPLATE, FakeBackend, serve, tiny_model

from app.chat.engine import ChatEngine, Sampling
from app.chat.tools import parse_tool_calls
from app.models.source import ModelSourceError
from app.serve.api import create_app
from app.serve.main import api_main, is_loopback

KEY = "test-key-123"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
HELLO = [{"role": "user", "content": "Say hello to Bob."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"],
                   "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}


def metric_values(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# ------------------------------------------------------------------ a tiny model: the whole surface, fast
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ChatEngine:
    root = tmp_path_factory.mktemp("tiny")
    try:
        engine = ChatEngine(str(tiny_model(root / "tools", TOOL_TEMPLATE)), base_name="tiny")
    except ModelSourceError as exc:
        pytest.fail(f"embedded model unavailable: {exc}")
    engine.add_adapter("plain", tiny_model(root / "plain", seed=1))  # a full model whose template has no tools
    return engine


@pytest.fixture(scope="module")
def tiny_url(tiny: ChatEngine) -> Iterator[str]:
    yield from serve(create_app(tiny, api_key=KEY))


@pytest.fixture(scope="module")
def tiny_client(tiny_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_url}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_n_choices_seeded_sampling_and_logprobs(tiny_client: openai.OpenAI):
    ask = dict(model="tiny", messages=HELLO, n=3, max_tokens=5, temperature=1.0, seed=11, logprobs=True,
               top_logprobs=2)
    reply = tiny_client.chat.completions.create(**ask)
    texts = [c.message.content for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1, 2] and len(set(texts)) > 1  # each choice its own seed
    assert texts == [c.message.content for c in tiny_client.chat.completions.create(**ask).choices]
    assert reply.usage.completion_tokens == sum(len(c.logprobs.content) for c in reply.choices) == 15
    first = reply.choices[0].logprobs.content[0]
    assert first.logprob <= 0 and len(first.top_logprobs) == 2 and bytes(first.bytes).decode() == first.token
    assert "".join(t.token for t in reply.choices[0].logprobs.content) == texts[0]
    chunks = list(tiny_client.chat.completions.create(**ask, stream=True))
    streamed = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i) for i in range(3)]
    assert streamed == texts


def test_completions_plain_prompts_echo_and_logprobs(tiny: ChatEngine, tiny_client: openai.OpenAI):
    reply = tiny_client.completions.create(model="tiny", prompt=["Once upon a time", "The cat"], n=2,
                                           max_tokens=4, temperature=0, logprobs=1, echo=True)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.choices[0].text.startswith("Once upon a time") and reply.choices[2].text.startswith("The cat")
    assert reply.choices[0].text == reply.choices[1].text  # greedy: n copies agree
    assert reply.choices[0].logprobs.text_offset[0] == len("Once upon a time")
    prompt_ids = tiny.tokenizer_for("tiny")("The cat")["input_ids"]
    alone = tiny.submit(prompt_ids, "tiny", Sampling(max_new_tokens=4))
    assert reply.choices[2].text == "The cat" + "".join(alone)
    once = tiny.tokenizer_for("tiny")("Once upon a time")["input_ids"]
    assert reply.usage.prompt_tokens == len(prompt_ids) + len(once)
    stream = list(tiny_client.completions.create(model="tiny", prompt="The cat", max_tokens=4, temperature=0,
                                                 stream=True))
    assert "The cat" + "".join(c.choices[0].text for c in stream) == reply.choices[2].text


def test_json_object_is_enforced(tiny_client: openai.OpenAI):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    reply = tiny_client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}})
    value = json.loads(reply.choices[0].message.content)  # a random model, yet valid JSON of that shape
    assert set(value) == {"answer", "sure"} and value["answer"] in ("yes", "no") and isinstance(value["sure"], bool)
    free = tiny_client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0,
                                               response_format={"type": "json_object"})
    assert free.choices[0].message.content.startswith("{")
    with pytest.raises(openai.BadRequestError) as bad:
        tiny_client.chat.completions.create(model="tiny", messages=HELLO, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})
    assert bad.value.body["param"] == "response_format"


def test_tool_calls_forced_and_rendered_through_the_template(tiny: ChatEngine, tiny_client: openai.OpenAI):
    named = tiny_client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=30, temperature=0)
    call = named.choices[0].message.tool_calls[0]
    assert named.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Oslo")
    required = tiny_client.chat.completions.create(model="tiny", messages=HELLO, tools=[WEATHER, TIME],
                                                   tool_choice="required", max_tokens=40, temperature=0)
    assert required.choices[0].message.tool_calls[0].function.name in ("get_weather", "get_time")
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    prompt = tiny.tokenizer_for("tiny").decode(tiny.prompt_ids(history, "tiny", tools=[WEATHER]))
    assert "<tool_call>" in prompt and '"get_weather"' in prompt and "sunny" in prompt and "get_weather" in prompt
    with pytest.raises(openai.BadRequestError) as refused:  # a template that never shows tools to the model
        tiny_client.chat.completions.create(model="plain", messages=HELLO, tools=[WEATHER])
    assert refused.value.body["param"] == "tools" and "does not render tools" in refused.value.body["message"]


def test_tool_call_parsing_of_free_text(tiny: ChatEngine):
    tokenizer = tiny.tokenizer_for("tiny")
    text = 'Let me check.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    content, calls = parse_tool_calls(tokenizer, text, "", [WEATHER, TIME])
    assert content == "Let me check." and [(c.name, json.loads(c.arguments)) for c in calls] == \
        [("get_weather", {"city": "Oslo"})]
    assert parse_tool_calls(tokenizer, "Just text", "", [WEATHER]) == ("Just text", [])
    unknown = '<tool_call>{"name": "launch", "arguments": {}}</tool_call>'
    assert parse_tool_calls(tokenizer, unknown, "", [WEATHER])[1] == []


def test_errors_are_openai_shaped(tiny_url: str, tiny_client: openai.OpenAI):
    wrong = openai.OpenAI(base_url=f"{tiny_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    raw = httpx.get(f"{tiny_url}/v1/models")
    assert raw.status_code == 401 and set(raw.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError) as bad:
        tiny_client.chat.completions.create(model="tiny", messages=HELLO, temperature=5)
    assert bad.value.status_code == 400 and bad.value.body["param"] == "temperature"
    for wrong_ask in ({"messages": []}, {"messages": HELLO, "n": 99}, {"messages": HELLO, "top_logprobs": 3},
                      {"messages": HELLO, "stop": list("abcde")}):
        with pytest.raises(openai.BadRequestError):
            tiny_client.chat.completions.create(model="tiny", **wrong_ask)
    too_long = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(openai.BadRequestError) as long_:
        tiny_client.chat.completions.create(model="tiny", messages=too_long)
    assert long_.value.body["code"] == "context_length_exceeded"
    broken = httpx.post(f"{tiny_url}/v1/chat/completions", content=b"{not json", timeout=30,
                        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert broken.status_code == 400 and "error" in broken.json()
    with pytest.raises(openai.NotFoundError) as missing:
        tiny_client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert missing.value.body["code"] == "model_not_found"
    assert httpx.get(f"{tiny_url}/health").json()["status"] == "ok"


def test_metrics_cover_latency_batch_and_tokens(tiny_url: str, tiny_client: openai.OpenAI):
    list(tiny_client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=6, stream=True))
    values = metric_values(tiny_url)
    assert values['ftstudio_time_to_first_token_seconds_count{}'] >= 1
    assert values['ftstudio_inter_token_latency_seconds_count{}'] >= 1
    assert values['ftstudio_completion_tokens_total{"model": "tiny"}'] >= 6
    for gauge in ("ftstudio_batch_size{}", "ftstudio_queue_depth{}", "ftstudio_requests_in_flight{}",
                  "ftstudio_generation_tokens_per_second{}"):
        assert gauge in values
    assert not any(name.startswith("ftstudio_gpu_") for name in values)  # no GPU here: no GPU series at all


def test_training_runs_are_exported(tmp_path: Path):
    from prometheus_client import generate_latest

    from app.serve.exporter import exporter_registry

    runs = tmp_path / "runs"
    for name, state in (("lumi", "running"), ("old", "finished"), ("next", "queued")):
        (runs / name).mkdir(parents=True)
        (runs / name / "state.json").write_text(json.dumps({"state": state}))
    lines = [{"t": 1, "kind": "log", "step": s, "total_steps": 80, "loss": 3.0 - s / 10, "lr": 1e-4,
              "tokens_per_s": 150.0, "mem_mb": 1024} for s in range(1, 6)]
    lines += [{"t": 2, "kind": "log", "final": True, "loss": None, "train_loss": 2.7}]  # the summary: skipped
    (runs / "lumi" / "events.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"t": 3, "ki')
    text = generate_latest(exporter_registry(runs)).decode()
    values = {s.name + json.dumps(s.labels, sort_keys=True): s.value
              for family in text_string_to_metric_families(text) for s in family.samples}
    assert values['ftstudio_train_step{"run": "lumi"}'] == 5 and values['ftstudio_train_loss{"run": "lumi"}'] == 2.5
    assert values['ftstudio_train_memory_bytes{"run": "lumi"}'] == 1024 * 2**20
    assert values['ftstudio_train_running{"run": "lumi"}'] == 1 and 'ftstudio_train_step{"run": "old"}' not in values
    assert [values[f'ftstudio_train_runs{{"state": "{s}"}}'] for s in ("running", "finished", "queued")] == [1, 1, 1]


# ------------------------------------------------------------------ a gated fake backend: admission, disconnects
@pytest.fixture()
def fake() -> Iterator[tuple[FakeBackend, str]]:
    backend = FakeBackend()
    server = serve(create_app(backend, api_key="", max_queue=1))  # "" = open, even with the env var set
    yield backend, next(server)
    backend.gate.set()
    next(server, None)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_queue_bound_is_hard(fake: tuple[FakeBackend, str]):
    backend, url = fake
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)

    def ask(_: int) -> str | int:
        try:
            return client.chat.completions.create(model="fake", messages=HELLO).choices[0].message.content
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "queue_full"
            return 429

    with ThreadPoolExecutor(6) as pool:  # one runs (max_batch 1), one waits (max_queue 1): four are refused
        answers = [pool.submit(ask, i) for i in range(6)]
        assert wait_for(lambda: sum(a.done() for a in answers) == 4)
        assert httpx.get(f"{url}/health").json()["in_flight"] == 2
        backend.gate.set()
        results = sorted(str(a.result()) for a in answers)
    assert results == ["429"] * 4 + ["Hello"] * 2
    assert httpx.get(f"{url}/health").json()["in_flight"] == 0


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
def test_client_disconnect_cancels_and_frees_its_place(fake: tuple[FakeBackend, str], stream: bool):
    backend, url = fake
    body = {"model": "fake", "messages": HELLO, "stream": stream}
    if stream:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
            first = next(response.iter_lines())
            assert first.startswith("data: ") and '"role":"assistant"' in first
    else:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while the model is still busy
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=1.0)
    assert wait_for(lambda: bool(backend.cancelled))
    assert wait_for(lambda: httpx.get(f"{url}/health").json()["in_flight"] == 0)


def test_api_main_refuses_open_public_bind(monkeypatch, capsys):
    monkeypatch.delenv("FTSTUDIO_API_KEY", raising=False)
    assert api_main(model=None, adapters=[], host="0.0.0.0", port=1, api_key=None) == 2
    assert "without an API key" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


# ------------------------------------------------------------------ the embedded model (slow)
@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ChatEngine:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        engine = ChatEngine()
    except ModelSourceError as exc:
        pytest.fail(f"embedded model unavailable: {exc}")
    folder = tmp_path_factory.mktemp("adapter") / "tuned"
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(engine.base_path, dtype=torch.float32)
    lora = get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    lora.save_pretrained(folder)
    AutoTokenizer.from_pretrained(engine.base_path).save_pretrained(folder)
    engine.add_adapter("tuned", folder)
    return engine


@pytest.fixture(scope="module")
def url(engine: ChatEngine) -> Iterator[str]:
    yield from serve(create_app(engine, api_key=KEY))


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=600)


QUESTIONS = ["What is the capital of France?", "Name a primary color.", "What is 2 plus 2?", "Say hello to Bob.",
             "Who wrote Hamlet?", "What do bees make?", "Name a planet.", "What color is the sky?"]


@pytest.mark.slow
def test_sixteen_concurrent_clients_answer_as_alone(url: str, client: openai.OpenAI, engine: ChatEngine):
    """16 streaming clients at once, mixing base and adapter: each greedy answer equals the request alone."""
    asks = [(("SmolLM2-135M-Instruct", "tuned")[i % 2], QUESTIONS[i % len(QUESTIONS)]) for i in range(16)]
    alone = {ask: engine.generate([{"role": "user", "content": ask[1]}], model=ask[0], max_new_tokens=12).text
             for ask in set(asks)}
    assert len({alone[a] for a in asks if a[0] == "tuned"} & {alone[a] for a in asks if a[0] != "tuned"}) == 0

    def one(ask: tuple[str, str]) -> str:
        stream = client.chat.completions.create(model=ask[0], messages=[{"role": "user", "content": ask[1]}],
                                                temperature=0, max_tokens=12, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    steps_before = engine.scheduler.steps
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, ask) for ask in asks]
        batched = wait_for(lambda: engine.load().running > 1, timeout=120)
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # the event loop is never blocked
        texts = [f.result() for f in futures]
    assert batched, "the requests never decoded together"
    assert texts == [alone[ask] for ask in asks]
    assert engine.scheduler.steps - steps_before < 16 * 12  # decode steps were shared
    values = metric_values(url)
    assert values['ftstudio_completion_tokens_total{"model": "tuned"}'] > 0
    assert values["ftstudio_time_to_first_token_seconds_count{}"] >= 16


@pytest.mark.slow
def test_stream_equals_non_stream_and_adapter_by_name(client: openai.OpenAI, engine: ChatEngine):
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=FRANCE, temperature=0,
                                           max_tokens=16)
    text = reply.choices[0].message.content
    assert "Paris" in text and reply.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=FRANCE, temperature=0,
                                                 max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage
    tuned = client.chat.completions.create(model="tuned", messages=HELLO, temperature=0, max_tokens=6)
    assert tuned.choices[0].message.content == engine.generate(HELLO, model="tuned", max_new_tokens=6).text


@pytest.mark.slow
def test_real_disconnect_frees_the_batch(url: str, engine: ChatEngine):
    body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 2000, "temperature": 0}
    headers = {"Authorization": f"Bearer {KEY}"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=2.0)
    assert wait_for(lambda: engine.load().running == 0 and httpx.get(f"{url}/health").json()["in_flight"] == 0, 30)
    done = threading.Event()
    threading.Thread(target=lambda: (httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=300, json={
        "model": "tuned", "messages": HELLO, "max_tokens": 4}), done.set()), daemon=True).start()
    assert done.wait(120)
