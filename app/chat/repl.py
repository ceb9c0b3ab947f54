"""`ftstudio chat`: one reply with --prompt, else an interactive streaming chat in the terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from app.chat.adapters import AdapterError
from app.models.source import ModelSourceError

HELP = "Commands: /reset clears the conversation, /exit (or Ctrl-D) quits. Ctrl-C stops a reply."
INTERACTIVE_TEMPERATURE = 0.7


def adapter_name(path: str) -> str:
    """A run folder's name, or for runs/<name>/adapter the run's name."""
    folder = Path(path).expanduser().resolve()
    return folder.parent.name if folder.name == "adapter" else folder.name


def chat_main(model: str | None = None, adapter: str | None = None, prompt: str | None = None,
              temperature: float | None = None, max_new_tokens: int = 256, system: str | None = None,
              stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    from app.chat.engine import ChatEngine  # torch and transformers: only once we really chat

    try:
        engine = ChatEngine(model)
        name = engine.add_adapter(adapter_name(adapter), adapter) if adapter else engine.base_name
    except (ModelSourceError, AdapterError) as exc:
        print(f"chat: {exc}", file=sys.stderr)
        return 1
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        reply = engine.generate(history + [{"role": "user", "content": prompt}], model=name,
                                temperature=0.0 if temperature is None else temperature,
                                max_new_tokens=max_new_tokens)
        print(reply.text, file=out, flush=True)
        return 0
    temp = INTERACTIVE_TEMPERATURE if temperature is None else temperature
    return _repl(engine, name, history, temp, max_new_tokens, stdin or sys.stdin, out)


def _read(stdin: TextIO, out: TextIO) -> str | None:
    """One line of input; None at end of input."""
    if stdin is sys.stdin and stdin.isatty():
        try:
            return input("you> ")
        except EOFError:
            return None
    out.write("you> ")
    out.flush()
    line = stdin.readline()
    return line.rstrip("\n") if line else None


def _repl(engine, name: str, system: list[dict[str, str]], temperature: float, max_new_tokens: int,
          stdin: TextIO, out: TextIO) -> int:
    print(f"Chatting with {name} (temperature {temperature:g}). {HELP}", file=out, flush=True)
    history = list(system)
    while True:
        try:
            line = _read(stdin, out)
        except KeyboardInterrupt:
            line = None
        if line is None or line.strip() in ("/exit", "/quit"):
            print(file=out)
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history = list(system)
            print("(conversation cleared)", file=out, flush=True)
            continue
        if text.startswith("/"):
            print(HELP, file=out, flush=True)
            continue
        history.append({"role": "user", "content": text})
        result = engine.stream(history, model=name, temperature=temperature, max_new_tokens=max_new_tokens)
        out.write("bot> ")
        parts: list[str] = []
        try:
            for delta in result:
                parts.append(delta)
                out.write(delta)
                out.flush()
        except KeyboardInterrupt:
            result.cancel()
            for _ in result:  # let the generation thread finish before the next turn
                pass
            out.write(" [stopped]")
        out.write("\n")
        out.flush()
        history.append({"role": "assistant", "content": "".join(parts)})
