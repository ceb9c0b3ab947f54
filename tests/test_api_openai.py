"""The OpenAI-compatible server, driven over real HTTP by the official openai client and httpx.

One uvicorn server on 127.0.0.1 serves the embedded SmolLM2-135M plus a random LoRA adapter; a second
one serves a scripted fake engine to pin down queueing, 429 and disconnects without a model.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from app.chat.engine import ChatEngine, Generation
from app.models.source import ModelSourceError
from app.serve.api import create_app
from app.serve.main import api_main, is_loopback

KEY = "test-key-123"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
HELLO = [{"role": "user", "content": "Say hello to Bob."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(app) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


# ------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ChatEngine:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        engine = ChatEngine()
    except ModelSourceError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")
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
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.mark.slow
def test_models_list_base_and_adapter(client: openai.OpenAI, engine: ChatEngine):
    models = {m.id: m for m in client.models.list()}
    assert list(models) == ["SmolLM2-135M-Instruct", "tuned"]
    assert models["tuned"].model_extra["parent"] == "SmolLM2-135M-Instruct"
    assert "parent" not in models["SmolLM2-135M-Instruct"].model_extra
    assert {m.owned_by for m in models.values()} == {"ftstudio"}
    assert client.models.retrieve("tuned").id == "tuned"


@pytest.mark.slow
def test_stream_equals_non_stream_at_temperature_zero(client: openai.OpenAI):
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=FRANCE, temperature=0,
                                           max_tokens=16)
    text = reply.choices[0].message.content
    assert "Paris" in text and reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=FRANCE, temperature=0,
                                                 max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage


@pytest.mark.slow
def test_raw_sse_framing(url: str):
    body = {"model": "SmolLM2-135M-Instruct", "messages": FRANCE, "max_tokens": 4, "stream": True,
            "temperature": 0, "stop": "zzz"}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert {p["object"] for p in payloads} == {"chat.completion.chunk"}
    assert len({p["id"] for p in payloads}) == 1
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}


@pytest.mark.slow
def test_adapter_is_chosen_by_model_name(client: openai.OpenAI, engine: ChatEngine):
    tuned = client.chat.completions.create(model="tuned", messages=HELLO, temperature=0, max_tokens=6)
    base = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=HELLO, temperature=0,
                                          max_tokens=6)
    assert tuned.model == "tuned"
    assert tuned.choices[0].message.content == engine.generate(HELLO, model="tuned", max_new_tokens=6).text
    assert tuned.choices[0].message.content != base.choices[0].message.content


@pytest.mark.slow
def test_errors_are_openai_shaped(url: str, client: openai.OpenAI):
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    raw = httpx.get(f"{url}/v1/models")
    assert raw.status_code == 401 and set(raw.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tuned", messages=HELLO, temperature=5)
    assert bad.value.status_code == 400 and bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tuned", messages=[])
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="tuned", messages=HELLO, n=2)
    broken = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", timeout=30,
                        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert broken.status_code == 400 and "error" in broken.json()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert missing.value.body["code"] == "model_not_found"
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


@pytest.mark.slow
def test_sixteen_concurrent_streams_and_metrics(url: str, client: openai.OpenAI):
    def one(_: int) -> str:
        stream = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=FRANCE, temperature=0,
                                                max_tokens=8, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(16)]
        time.sleep(1.0)
        start = time.perf_counter()
        health = httpx.get(f"{url}/health", timeout=30)
        assert health.status_code == 200 and time.perf_counter() - start < 2.0  # the loop is never blocked
        texts = [f.result() for f in futures]
    assert len(set(texts)) == 1 and texts[0].startswith("The capital of France")

    metrics = {s.name + json.dumps(s.labels, sort_keys=True): s.value
               for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
               for s in family.samples}
    key = 'ftstudio_http_requests_total{"method": "POST", "route": "/v1/chat/completions", "status": "200"}'
    assert metrics[key] >= 16
    assert metrics['ftstudio_completion_tokens_total{"model": "SmolLM2-135M-Instruct"}'] >= 16 * 8
    assert metrics['ftstudio_prompt_tokens_total{"model": "SmolLM2-135M-Instruct"}'] >= 16 * 30
    assert metrics["ftstudio_queue_depth{}"] == 0
    assert metrics['ftstudio_http_request_duration_seconds_count{"route": "/v1/chat/completions"}'] >= 16
    assert metrics["ftstudio_time_to_first_token_seconds_count{}"] >= 16
    assert 'ftstudio_http_requests_total{"method": "GET", "route": "/v1/models", "status": "401"}' in metrics


# ------------------------------------------------------------------ a scripted engine (no model)
class FakeStream:
    """Two deltas once the gate opens; records a cancel that came before the end."""

    def __init__(self, gate: threading.Event, cancelled: list[bool]):
        self.gate, self.cancelled, self.generation = gate, cancelled, None
        self.deltas = iter(["Hel", "lo"])
        self.stopped = False

    def start(self) -> FakeStream:
        return self

    def cancel(self) -> None:
        if self.generation is None:
            self.stopped = True
            self.cancelled.append(True)
            self.gate.set()

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> str:
        self.gate.wait(30)
        if self.stopped:
            self.generation = Generation("", 3, 0, "cancelled")
            raise StopIteration
        try:
            return next(self.deltas)
        except StopIteration:
            self.generation = Generation("Hello", 3, 2, "stop")
            raise


class FakeEngine:
    base_name = "fake"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.cancelled: list[bool] = []

    def names(self) -> list[str]:
        return ["fake"]

    def is_adapter(self, name: str) -> bool:
        return False

    def stream(self, messages, **kwargs) -> FakeStream:
        return FakeStream(self.gate, self.cancelled)


@pytest.fixture()
def fake() -> Iterator[tuple[FakeEngine, str]]:
    engine = FakeEngine()
    server = serve(create_app(engine, api_key="", max_queue=1))  # "" = open, even with the env var set
    yield engine, next(server)
    engine.gate.set()
    next(server, None)


def test_queue_bound_gives_429_then_serves(fake: tuple[FakeEngine, str]):
    engine, url = fake
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)

    def ask(_: int) -> str:
        return client.chat.completions.create(model="fake", messages=HELLO).choices[0].message.content

    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(ask, 0)
        for _ in range(100):  # the first holds the model; then one may wait
            if httpx.get(f"{url}/metrics").text.count("ftstudio_generations_running 1.0"):
                break
            time.sleep(0.05)
        waiting = pool.submit(ask, 1)
        for _ in range(100):
            if httpx.get(f"{url}/health").json()["queue_depth"] == 1:
                break
            time.sleep(0.05)
        with pytest.raises(openai.RateLimitError) as busy:
            client.chat.completions.create(model="fake", messages=HELLO)
        assert busy.value.body["code"] == "queue_full"
        engine.gate.set()
        assert running.result() == waiting.result() == "Hello"


def test_client_disconnect_cancels_generation(fake: tuple[FakeEngine, str]):
    engine, url = fake
    body = {"model": "fake", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ") and '"role":"assistant"' in first
    for _ in range(100):  # the server notices the closed connection and cancels the generation
        if engine.cancelled:
            break
        time.sleep(0.05)
    assert engine.cancelled
    assert httpx.get(f"{url}/health").json()["queue_depth"] == 0


def test_api_main_refuses_open_public_bind(monkeypatch, capsys):
    monkeypatch.delenv("FTSTUDIO_API_KEY", raising=False)
    assert api_main(model=None, adapters=[], host="0.0.0.0", port=1, api_key=None) == 2
    assert "without an API key" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
