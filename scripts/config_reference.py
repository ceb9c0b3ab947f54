"""Regenerate the README's configuration reference from the JobConfig schema (the one source).

    python scripts/config_reference.py          # rewrite README.md in place
    python scripts/config_reference.py --check  # exit 1 if README.md is out of date (tests run this)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import GROUPS, JobConfig  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def table() -> str:
    spec = JobConfig.spec()
    out = []
    for group, title in GROUPS.items():
        fields = [(name, f) for name, f in spec.items() if f.metadata["group"] == group]
        if not fields:
            continue
        out += [f"**{title}**", "", "| key | default | meaning |", "|---|---|---|"]
        for name, f in fields:
            choices = f.metadata["choices"]
            extra = f" One of: {', '.join(str(c) for c in choices if c is not None)}." if choices else ""
            default = "empty" if f.default is None else f"`{f.default}`"
            out.append(f"| `{name}` | {default} | {f.metadata['help']}{extra} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}{END}{tail}"


if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in sys.argv:
        sys.exit(0 if new == text else 1)
    README.write_text(new, encoding="utf-8")
