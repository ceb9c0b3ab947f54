"""ChatEngine on the embedded SmolLM2-135M (CPU): greedy, stop strings, streaming, adapter switching."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from app.chat import AdapterError, BaseMismatchError, ChatEngine, UnknownModelError
from app.chat.adapters import resolve_adapter
from app.chat.stops import StopFilter
from app.config import JobConfig
from app.models.source import ModelSourceError

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
HELLO = [{"role": "user", "content": "Say hello to Bob."}]
PIRATE_TEMPLATE_SYSTEM = "You are a pirate who answers every question"


@pytest.fixture(scope="module")
def engine() -> ChatEngine:
    try:
        return ChatEngine()
    except ModelSourceError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")


@pytest.fixture(scope="module")
def france(engine: ChatEngine):
    return engine.generate(FRANCE, max_new_tokens=16)


def make_lora(base, tokenizer, folder: Path, seed: int, targets: list[str]):
    """Save a LoRA adapter with random A and B (so it changes outputs) plus the tokenizer; returns the base."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.unload()  # the untouched base back, for the next adapter


@pytest.fixture(scope="module")
def adapters(engine: ChatEngine, tmp_path_factory) -> dict[str, Path]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("adapters")
    base = AutoModelForCausalLM.from_pretrained(engine.base_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(engine.base_path)
    base = make_lora(base, tokenizer, root / "a", 1, ["q_proj", "v_proj"])
    pirate = AutoTokenizer.from_pretrained(engine.base_path)
    pirate.chat_template = pirate.chat_template.replace("You are a helpful AI assistant named SmolLM",
                                                        PIRATE_TEMPLATE_SYSTEM)
    base = make_lora(base, pirate, root / "b", 2, ["o_proj", "down_proj"])
    return {"a": root / "a", "b": root / "b", "_base": base}


def fresh_peft_reply(base, folder: Path, messages, max_new_tokens: int) -> str:
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    model.unload()
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


# ------------------------------------------------------------------ stop filter (no model)
def test_stop_filter_holds_back_partial_stops():
    f = StopFilter(["STOP", "\n\n"])
    out = [f.feed(piece) for piece in ["Hello S", "T", "ay", "y ST", "OP and more"]]
    assert out[0] == "Hell"  # "o S" is held back: it could be the start of STOP
    assert "".join(out) == "Hello STayy " and f.stopped
    assert f.feed("ignored") == "" and f.flush() == ""
    g = StopFilter(None)
    assert g.feed("abc") == "abc" and g.flush() == ""
    h = StopFilter(["xyz"])
    assert h.feed("ab") == "" and h.flush() == "ab"


# ------------------------------------------------------------------ base model
def test_greedy_is_sensible_and_deterministic(engine: ChatEngine, france):
    assert "Paris" in france.text
    assert france.finish_reason == "stop"
    assert france.prompt_tokens == len(engine.prompt_ids(FRANCE))
    assert 0 < france.completion_tokens <= 16
    assert engine.generate(FRANCE, max_new_tokens=16) == france
    assert engine.names() == ["SmolLM2-135M-Instruct"]


def test_stream_deltas_concatenate_to_greedy_text(engine: ChatEngine, france):
    result = engine.stream(FRANCE, max_new_tokens=16)
    deltas = list(result)
    assert len(deltas) > 1
    assert "".join(deltas) == france.text
    assert result.generation == france


def test_stop_strings_cut_text_and_end_generation(engine: ChatEngine, france):
    cut = engine.generate(FRANCE, max_new_tokens=16, stop=["Paris"])
    assert cut.text == france.text[: france.text.index("Paris")]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < france.completion_tokens
    result = engine.stream(FRANCE, max_new_tokens=16, stop=["zzz", "of Fr"])
    assert "".join(result) == france.text[: france.text.index("of Fr")]
    assert result.generation is not None and result.generation.finish_reason == "stop"


def test_length_limit_and_seeded_sampling(engine: ChatEngine):
    short = engine.generate(FRANCE, max_new_tokens=3)
    assert short.finish_reason == "length" and short.completion_tokens == 3
    one = engine.generate(FRANCE, max_new_tokens=6, temperature=1.0, seed=7)
    two = engine.generate(FRANCE, max_new_tokens=6, temperature=1.0, seed=7)
    assert one.text == two.text


def test_system_turn_and_unknown_model(engine: ChatEngine):
    with_system = [{"role": "system", "content": "You speak like a cowboy."}, *FRANCE]
    text = engine.tokenizer.decode(engine.prompt_ids(with_system))
    assert "You speak like a cowboy." in text and "helpful AI assistant" not in text
    with pytest.raises(UnknownModelError):
        engine.generate(FRANCE, model="nope")


# ------------------------------------------------------------------ adapters
def test_adapter_switching_keeps_base_and_matches_fresh_peft(engine: ChatEngine, adapters):
    base_before = engine.generate(HELLO, max_new_tokens=8)
    assert engine.add_adapter("a", adapters["a"]) == "a"
    assert engine.add_adapter("b", adapters["b"]) == "b"
    assert engine.names() == ["SmolLM2-135M-Instruct", "a", "b"]
    a_reply = engine.generate(HELLO, model="a", max_new_tokens=8)
    b_reply = engine.generate(HELLO, model="b", max_new_tokens=8)
    assert engine.generate(HELLO, max_new_tokens=8) == base_before  # adapters disabled for the base
    assert engine.generate(HELLO, model="SmolLM2-135M-Instruct", max_new_tokens=8) == base_before
    assert a_reply.text != base_before.text and b_reply.text != a_reply.text
    assert engine.generate(HELLO, model="a", max_new_tokens=8) == a_reply  # switching back is exact
    assert a_reply.text == fresh_peft_reply(adapters["_base"], adapters["a"], HELLO, 8)
    assert b_reply.text == fresh_peft_reply(adapters["_base"], adapters["b"], HELLO, 8)
    # each adapter renders prompts with its own saved chat template
    assert PIRATE_TEMPLATE_SYSTEM in engine.tokenizer_for("b").decode(engine.prompt_ids(HELLO, "b"))
    assert PIRATE_TEMPLATE_SYSTEM not in engine.tokenizer.decode(engine.prompt_ids(HELLO, "a"))
    with pytest.raises(ValueError, match="already taken"):
        engine.add_adapter("a", adapters["a"])


def test_concurrent_callers_do_not_interleave_adapters(engine: ChatEngine, adapters):
    expected = {name: engine.generate(HELLO, model=name, max_new_tokens=5).text for name in ("a", "b")}
    got: dict[str, str] = {}

    def ask(name: str) -> None:
        got[name] = "".join(engine.stream(HELLO, model=name, max_new_tokens=5))

    threads = [threading.Thread(target=ask, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_run_folder_resolves_to_its_adapter(engine: ChatEngine, adapters, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(adapters["a"], run / "adapter")
    JobConfig().save(run / "job.yaml")
    source = resolve_adapter(run)
    assert source.kind == "lora" and source.path == (run / "adapter").resolve() and source.run == run.resolve()
    assert "" in (source.trained_on or [])  # job.yaml: the embedded default
    assert engine.add_adapter("run", run) == "run"
    assert engine.generate(HELLO, model="run", max_new_tokens=8).text == \
        engine.generate(HELLO, model="a", max_new_tokens=8).text


def test_checkpoint_without_tokenizer_uses_the_jobs_template(engine: ChatEngine, adapters, tmp_path: Path):
    run = tmp_path / "run-alpaca"
    checkpoint = run / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapters["a"] / name, checkpoint / name)
    JobConfig(template="alpaca").save(run / "job.yaml")
    source = resolve_adapter(checkpoint)
    assert source.run == run.resolve() and source.template == "alpaca" and not source.has_tokenizer
    engine.add_adapter("ckpt", checkpoint)
    prompt = engine.tokenizer_for("ckpt").decode(engine.prompt_ids(HELLO, "ckpt"))
    assert "### Instruction" in prompt and "<|im_start|>" not in prompt


def test_bad_paths_and_mismatched_base(engine: ChatEngine, adapters, tmp_path: Path):
    pending = tmp_path / "pending"
    pending.mkdir()
    JobConfig().save(pending / "job.yaml")
    (pending / "state.json").write_text(json.dumps({"state": "running"}))
    with pytest.raises(AdapterError, match="no adapter/ yet.*running"):
        engine.add_adapter("pending", pending)
    with pytest.raises(AdapterError, match="does not exist"):
        engine.add_adapter("missing", tmp_path / "missing")
    other = tmp_path / "other"
    shutil.copytree(adapters["a"], other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "org/other-7b"}))
    with pytest.raises(BaseMismatchError, match="org/other-7b"):
        engine.add_adapter("other", other)
    assert "other" not in engine.names()


def test_full_model_run_folder_loads_as_its_own_model(engine: ChatEngine, adapters, tmp_path: Path):
    from transformers import AutoTokenizer

    run = tmp_path / "full-run"
    adapters["_base"].save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(engine.base_path).save_pretrained(run / "adapter")
    assert resolve_adapter(run).kind == "full"
    engine.add_adapter("full", run)
    assert engine.generate(HELLO, model="full", max_new_tokens=8) == engine.generate(HELLO, max_new_tokens=8)


# ------------------------------------------------------------------ ftstudio chat
def test_chat_cli_prompt_and_interactive(adapters, capsys):
    import io

    from app.chat.repl import chat_main

    assert chat_main(prompt="What is the capital of France?", max_new_tokens=12) == 0
    assert "Paris" in capsys.readouterr().out
    stdin, stdout = io.StringIO("Hi\n/reset\n\n/help\nBye\n"), io.StringIO()
    assert chat_main(adapter=str(adapters["a"]), temperature=0, max_new_tokens=3, system="Be brief.",
                     stdin=stdin, stdout=stdout) == 0  # ends at end of input, like Ctrl-D
    out = stdout.getvalue()
    assert out.startswith("Chatting with a (temperature 0)") and out.count("bot> ") == 2
    assert "(conversation cleared)" in out and "/reset clears" in out
    assert chat_main(adapter="/nonexistent/run") == 1
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------ batching
def test_one_batch_mixes_settings_and_each_request_answers_as_alone(engine: ChatEngine, adapters):
    for name in ("a", "b"):
        if name not in engine.names():
            engine.add_adapter(name, adapters[name])
    asks = [dict(messages=FRANCE, max_new_tokens=16), dict(messages=HELLO, temperature=1.0, seed=5, max_new_tokens=8),
            dict(messages=FRANCE, stop=["Paris"], max_new_tokens=16), dict(messages=HELLO, max_new_tokens=3),
            dict(messages=HELLO, model="a", max_new_tokens=8), dict(messages=FRANCE, model="b", max_new_tokens=8)]
    alone = [engine.generate(**ask) for ask in asks]
    long_one = engine.stream([{"role": "user", "content": "Write a long story about a dragon."}], max_new_tokens=200)
    results = [engine.stream(**ask) for ask in asks]
    for result in [long_one, *results]:
        result.start()  # all submitted at once: they decode in one batch
    first = next(long_one)
    long_one.cancel()
    together = []
    for result in results:
        for _ in result:
            pass
        together.append(result.generation)
    assert together == alone
    for _ in long_one:
        pass
    assert first and long_one.generation.finish_reason == "cancelled"
    assert long_one.generation.completion_tokens < 200
    deadline = time.time() + 30  # the scheduler counts the batch once the step that finished them ends
    while engine.load().running and time.time() < deadline:
        time.sleep(0.05)
    assert engine.load().running == 0 and engine.load().waiting == 0


def test_logprobs_and_json_output(engine: ChatEngine):
    reply = engine.generate(FRANCE, max_new_tokens=6, logprobs=2)
    assert len(reply.logprobs) == reply.completion_tokens - (reply.finish_reason == "stop")
    assert "".join(t.token for t in reply.logprobs) == reply.text
    assert all(t.logprob <= 0 and len(t.top) == 2 and t.top[0][1] >= t.logprob for t in reply.logprobs)
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}},
              "required": ["capital"], "additionalProperties": False}
    shaped = engine.generate(FRANCE, max_new_tokens=30, json_schema=schema)
    assert set(json.loads(shaped.text)) == {"capital"}
