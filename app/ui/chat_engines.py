"""The Chat tab's models: one ChatEngine per base model for the whole UI process, adapters added on demand.

Every browser session shares these engines (each batches concurrent requests, so sessions chat at the
same time rather than in turn), so the base is loaded once (on the first message) and
choosing another finished run only adds its LoRA adapter to the same engine (`set_adapter`, never a
reload). A run trained again under the same name gets its new adapter loaded under a fresh engine name,
so a chat never answers with stale weights. No gradio here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Imported here, in the thread that builds the UI: importing transformers' model classes for the first time
# from a Gradio worker while another worker imports other parts of transformers can hand one of them a
# half-initialised module ("cannot import name 'AutoModelForCausalLM'"). The studio loads torch and
# transformers at start anyway; the model itself still loads only with the first message.
from app.chat.engine import ChatEngine

BASE = "__base__"  # the dropdown value that means "the base model, no adapter"


def base_key(model: str | None) -> str:
    """The cache key of a base model reference (the embedded default is "")."""
    from app.models.source import is_embedded

    return "" if is_embedded(model) else str(model).strip()


@dataclass
class _Entry:
    engine: ChatEngine
    adapters: dict[str, tuple[str, float]] = field(default_factory=dict)  # run -> (engine name, mtime)
    lock: threading.Lock = field(default_factory=threading.Lock)


class EngineCache:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def loaded(self, model: str | None) -> bool:
        return base_key(model) in self._entries

    def engine(self, model: str | None) -> ChatEngine:
        """The engine of base `model` (None = embedded), loading it the first time (slow)."""
        key = base_key(model)
        with self._lock:
            if key in self._entries:
                return self._entries[key].engine
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # a second session asking meanwhile waits for this load instead of doing its own
            if key not in self._entries:
                self._entries[key] = _Entry(ChatEngine(key or None))
            return self._entries[key].engine

    def target(self, model: str | None, run: str | None, run_path: Path | None) -> str:
        """The engine's name for `run` (loading its adapter when new or retrained); the base for None/BASE."""
        entry = self._entries[base_key(model)]
        if run in (None, "", BASE):
            return entry.engine.base_name
        assert run_path is not None
        stamp = adapter_stamp(run_path)
        with entry.lock:
            known = entry.adapters.get(run)
            if known and known[1] == stamp:
                return known[0]
            name = run if known is None and run not in entry.engine.names() else _fresh(run, entry.engine.names())
            entry.engine.add_adapter(name, run_path)
            entry.adapters[run] = (name, stamp)
            return name

    def has_current(self, model: str | None, run: str, run_path: Path) -> bool:
        """Whether `run`'s adapter, as it is on disk now, is already loaded on base `model`."""
        entry = self._entries.get(base_key(model))
        known = entry.adapters.get(run) if entry else None
        return known is not None and known[1] == adapter_stamp(run_path)

    def describe(self, model: str | None) -> str:
        entry = self._entries.get(base_key(model))
        if entry is None:
            return ""
        adapters = ", ".join(entry.adapters) or "none yet"
        return f"{entry.engine.base_name} on {entry.engine.device} (adapters loaded: {adapters})"


def adapter_stamp(run_path: Path) -> float:
    """When the run's adapter weights were last written (0 when unknown)."""
    folder = run_path / "adapter" if (run_path / "adapter").is_dir() else run_path
    times = [p.stat().st_mtime for pattern in ("*.safetensors", "*.bin") for p in folder.glob(pattern)]
    return max(times, default=0.0)


def _fresh(run: str, taken: Sequence[str]) -> str:
    n = 2
    while f"{run}#{n}" in taken:
        n += 1
    return f"{run}#{n}"


ENGINES = EngineCache()  # process-wide: every session and tab shares it


def message_text(content: Any) -> str:
    """Plain text of a gr.Chatbot message's content (Gradio 6 sends a list of {"type": "text", ...} parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return str(content)


def plain_messages(history: Sequence[Any] | None) -> list[dict[str, str]]:
    """A chatbot's value as [{"role", "content": str}] (user and assistant turns only)."""
    out = []
    for message in history or []:
        if isinstance(message, dict):
            role, content = message.get("role"), message.get("content")
        else:  # a gr.ChatMessage
            role, content = getattr(message, "role", None), getattr(message, "content", None)
        if role in ("user", "assistant"):
            out.append({"role": role, "content": message_text(content)})
    return out


def prompt_messages(system: str, history: Sequence[dict[str, str]], prompt: str) -> list[dict[str, str]]:
    """What the engine gets: the system prompt (if any), the earlier turns, the new user message."""
    head = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    return head + [dict(m) for m in history] + [{"role": "user", "content": prompt}]
