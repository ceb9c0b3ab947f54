"""Regenerate the README's configuration references from the schemas (the one source).

    python scripts/config_reference.py          # rewrite README.md in place
    python scripts/config_reference.py --check  # exit 1 if README.md is out of date (tests run this)

Each schema has its own table between its own markers: JobConfig (`ftstudio train`), EvalConfig
(`ftstudio eval`), JudgeConfig (`ftstudio judge`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import EVAL_GROUPS, GROUPS, JUDGE_GROUPS, EvalConfig, JobConfig, JudgeConfig, Schema  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
# marker name -> (schema, its groups in order)
SECTIONS: dict[str, tuple[type[Schema], dict[str, str]]] = {
    "config-reference": (JobConfig, GROUPS),
    "eval-reference": (EvalConfig, EVAL_GROUPS),
    "judge-reference": (JudgeConfig, JUDGE_GROUPS),
}


def markers(section: str) -> tuple[str, str]:
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


def table(schema: type[Schema] = JobConfig, groups: dict[str, str] = GROUPS) -> str:
    spec = schema.spec()
    out = []
    for group, title in groups.items():
        fields = [(name, f) for name, f in spec.items() if f.metadata["group"] == group]
        if not fields:
            continue
        out += [f"**{title}**", "", "| key | default | meaning |", "|---|---|---|"]
        for name, f in fields:
            choices = f.metadata["choices"]
            extra = f" One of: {', '.join(str(c) for c in choices if c is not None)}." if choices else ""
            default = "empty" if f.default in (None, "") else f"`{f.default}`"
            out.append(f"| `{name}` | {default} | {f.metadata['help']}{extra} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render(readme: str) -> str:
    for section, (schema, groups) in SECTIONS.items():
        start, end = markers(section)
        if start not in readme:
            continue
        head, rest = readme.split(start, 1)
        _, tail = rest.split(end, 1)
        readme = f"{head}{start}\n{table(schema, groups)}{end}{tail}"
    return readme


if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in sys.argv:
        sys.exit(0 if new == text else 1)
    README.write_text(new, encoding="utf-8")
