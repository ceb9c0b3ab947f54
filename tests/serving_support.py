"""Shared by the serving tests: a uvicorn server on 127.0.0.1, a tiny random model, a gated fake backend."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from app.chat.backends.base import Delta, Generation, Load, Sampling, StreamResult

# A Hermes-style template that renders tools and tool calls (as Qwen 2.5's and SmolLM3's do).
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou can call these functions: {{ tools | tojson }}\n"
    "Answer with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>.<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n"
    "{%- if message.tool_calls %}{%- for call in message.tool_calls %}<tool_call>"
    "{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}</tool_call>"
    "{%- endfor %}{%- else %}{{ message.content }}{%- endif %}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REPO = Path(__file__).resolve().parents[1]


@contextmanager
def api_process(args: list[str], log_file: Path, env: dict[str, str] | None = None,
                start_timeout_s: float = 300) -> Iterator[str]:
    """`python -m app.cli api --port P ARGS` in its own session on a free loopback port; yields its base URL
    once /health answers (its log's tail if it exits first); ends its whole group afterwards."""
    port = free_port()
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port),
                                 *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=os.environ | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"} | (env or {}))
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + start_timeout_s
            while True:
                assert proc.poll() is None, log_file.read_text()[-3000:]
                assert time.time() < deadline, "the API did not start"
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=5):
                        break
                except OSError:
                    time.sleep(0.5)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def serve(app: Any) -> Iterator[str]:
    """Yield the base URL of `app` served by uvicorn in a thread; stop it afterwards."""
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


def tiny_model(folder: Path, template: str | None = None, seed: int = 0, context: int = 256) -> Path:
    """A 2-layer random Llama with the embedded model's tokenizer: generation costs about a millisecond a token."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from app.models.source import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(None))
    if template is not None:
        tokenizer.chat_template = template
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class _Tokenizer:
    chat_template = "fake"
    eos_token_id = 0

    def decode(self, ids: list[int]) -> str:
        return ""

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [1, 2, 3]}


class FakeBackend:
    """Generations that wait for `gate`, then say "Hel" "lo"; one runs at a time (max_batch 1)."""

    base_name, kind = "fake", "fake"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.cancelled: list[bool] = []
        self.running = 0
        self.waiting = 0
        self._slot = threading.Lock()

    def names(self) -> list[str]:
        return ["fake"]

    def is_adapter(self, name: str) -> bool:
        return False

    def tokenizer_for(self, model: str | None = None) -> Any:
        return _Tokenizer()

    def prompt_ids(self, messages: Any, model: str | None = None, tools: Any = None,
                   template_kwargs: Any = None) -> list[int]:
        return [1, 2, 3]

    def load(self) -> Load:
        return Load(self.running, self.waiting, 1)

    def close(self) -> None:
        self.gate.set()

    def submit(self, prompt_ids: list[int], model: str | None, sampling: Sampling) -> StreamResult:
        def work(result: StreamResult) -> None:
            self.waiting += 1
            with self._slot:
                self.waiting -= 1
                self.running += 1
                try:
                    self.gate.wait(30)
                    if result.cancelled:
                        self.cancelled.append(True)
                        result.put("done", Generation("", 3, 0, "cancelled"))
                        return
                    for piece in ("Hel", "lo"):
                        result.put("delta", Delta(piece))
                    result.put("done", Generation("Hello", 3, 2, "stop"))
                finally:
                    self.running -= 1

        def start(result: StreamResult) -> None:
            threading.Thread(target=work, args=(result,), daemon=True).start()

        return StreamResult(3, start, on_cancel=self.gate.set)
