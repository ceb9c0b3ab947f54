"""Hot swap on the transformers backend: a name moves to new weights without a restart; a request that was
already decoding finishes on the old ones; swapped-out PEFT adapters are unloaded once unused. A tiny random
Llama and random LoRA adapters keep it fast (greedy outputs of random weights differ per adapter)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from serving_support import tiny_model

from app.chat.engine import ChatEngine

ASK = [{"role": "user", "content": "Hello there"}]


def lora(base: Path, folder: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[ChatEngine, dict[str, Path]]:
    root = tmp_path_factory.mktemp("swap")
    base = tiny_model(root / "base")
    adapters = {f"v{i}": lora(base, root / f"v{i}", seed=i + 1) for i in range(3)}
    engine = ChatEngine(str(base), max_batch=4)
    yield engine, adapters
    engine.close()


def answer(engine: ChatEngine, model: str) -> str:
    return engine.generate(ASK, model=model, max_new_tokens=12).text


def test_a_swap_serves_new_weights_and_leaves_a_running_request_on_the_old(setup):
    engine, adapters = setup
    engine.add_adapter("ref0", adapters["v0"])
    engine.add_adapter("ref1", adapters["v1"])
    old, new = answer(engine, "ref0"), answer(engine, "ref1")
    assert old != new and old != answer(engine, engine.base_name)

    engine.replace_adapter("assistant", adapters["v0"])  # a new name
    assert "assistant" in engine.names() and answer(engine, "assistant") == old
    # Swap while a request decodes: from its listener (the scheduler's thread) at its second token, so the
    # swap lands mid-generation however fast the machine is.
    deltas: list[str] = []
    done = threading.Event()

    def on_event(event: tuple) -> None:
        kind, value = event
        if kind == "delta":
            deltas.append(value.text)
            if len(deltas) == 2:
                engine.replace_adapter("assistant", adapters["v1"])
        else:
            done.set()

    engine.stream(ASK, model="assistant", max_new_tokens=12).listen(on_event)
    assert done.wait(60) and len(deltas) > 2
    assert "".join(deltas) == old  # finished on the weights it started with
    assert answer(engine, "assistant") == new


def test_rollback_to_the_base_and_unused_adapters_are_unloaded(setup):
    engine, adapters = setup
    engine.replace_adapter("assistant", None)  # the base model alone, under the same name
    assert answer(engine, "assistant") == answer(engine, engine.base_name)
    engine.replace_adapter("assistant", adapters["v2"])
    before = set(engine._peft.peft_config)
    engine.replace_adapter("assistant", adapters["v1"])
    after = set(engine._peft.peft_config)
    assert len(after) == len(before)  # one loaded, the swapped-out one unloaded: no growth per swap
    assert answer(engine, "assistant") == answer(engine, "ref1")
    with pytest.raises(ValueError, match="base model"):
        engine.replace_adapter(engine.base_name, adapters["v1"])
