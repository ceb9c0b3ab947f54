"""Per-request chat template variables (vLLM's `chat_template_kwargs`) in the API's chat completions: Qwen3's
thinking switch set per request, on the tiny qwen3 of test_families.py. A template saved with thinking off
(`enable_thinking: false` in the job) stays off by default and a request can still turn thinking on."""

from __future__ import annotations

from pathlib import Path

import pytest
from family_support import FAMILIES, QUESTION, SYSTEM, build_family_model

MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
THINKING, NOT_THINKING = FAMILIES["qwen3"].prompt, FAMILIES["qwen3-nothink"].prompt


def _with_template(source: Path, folder: Path, enable_thinking: bool) -> Path:
    """A copy of the tiny qwen3 whose tokenizer carries the qwen3 template as a job would save it."""
    from transformers import AutoTokenizer

    from app.data.render import resolve_template

    folder.mkdir()
    for item in source.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    resolve_template(tokenizer, "qwen3", enable_thinking)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clients(tmp_path_factory) -> dict:
    from fastapi.testclient import TestClient

    from app.chat.engine import ChatEngine
    from app.serve.api import create_app

    root = tmp_path_factory.mktemp("qwen3-kwargs")
    base = build_family_model(root / "base", FAMILIES["qwen3"], train_steps=0)
    found = {}
    for name, thinking in (("thinking", True), ("off", False)):
        engine = ChatEngine(model=str(_with_template(base, root / name, thinking)))
        found[name] = (TestClient(create_app(engine, api_key="")), engine)
    yield found
    for _, engine in found.values():
        engine.close()


def prompt_tokens(client, model: str, **extra) -> int:
    response = client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": 1}
                           | extra)
    assert response.status_code == 200, response.text
    return response.json()["usage"]["prompt_tokens"]


def _counter(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def test_thinking_is_switched_per_request(clients) -> None:
    for name, default in (("thinking", THINKING), ("off", NOT_THINKING)):
        client, engine = clients[name]
        model = engine.base_name
        tokenizer = engine.tokenizer_for(model)
        length = _counter(tokenizer)
        assert length(NOT_THINKING) > length(THINKING)  # the empty think block
        assert prompt_tokens(client, model) == length(default)
        assert prompt_tokens(client, model, chat_template_kwargs={"enable_thinking": False}) == length(NOT_THINKING)
        assert prompt_tokens(client, model, chat_template_kwargs={"enable_thinking": True}) == length(THINKING)
        ids = engine.prompt_ids(MESSAGES, model, template_kwargs={"enable_thinking": False})
        assert tokenizer.decode(ids) == NOT_THINKING


def test_the_servers_own_render_arguments_are_refused(clients) -> None:
    client, engine = clients["thinking"]
    response = client.post("/v1/chat/completions", json={
        "model": engine.base_name, "messages": MESSAGES, "chat_template_kwargs": {"add_generation_prompt": False}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "chat_template_kwargs" and "add_generation_prompt" in error["message"]
    # a variable the template cannot use is the request's mistake: 400 naming the field, never a 500
    response = client.post("/v1/chat/completions", json={
        "model": engine.base_name, "messages": MESSAGES, "chat_template_kwargs": {"enable_thinking": {"a": 1},
                                                                                  "bos_token": {"b": [1]}}})
    assert response.status_code in (200, 400), response.text
    response = client.post("/v1/chat/completions", json={
        "model": engine.base_name, "messages": MESSAGES, "chat_template_kwargs": {"raise_exception": 1}})
    assert response.status_code == 400 and response.json()["error"]["param"] == "chat_template_kwargs"
