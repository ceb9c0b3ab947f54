"""The Export tab's words: default output folders and the export report as Markdown. No gradio here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

QUANT_CHOICES = ("f16", "q8_0", "q4_k_m", "q5_k_m")


def default_output(root: Path, name: str | None, fmt: str, quant: str) -> str:
    """`<root>/exports/<name>-<fmt>[-<quant>]` (quant only for GGUF), relative to the cwd when inside it."""
    tag = f"{fmt}-{quant}" if fmt == "gguf" else fmt
    path = root / "exports" / f"{name or 'model'}-{tag}"
    return shown_path(path)


def shown_path(path: Path | str) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def ollama_name(name: str) -> str:
    """A model name Ollama accepts: lowercase letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "model"


def _files_table(report: dict[str, Any]) -> list[str]:
    files = report.get("files") or []
    if not files:
        return []
    total = sum(f["bytes"] for f in files)
    lines = ["| file | size |", "|---|---:|"]
    lines += [f"| `{f['path']}` | {human_size(f['bytes'])} |" for f in files]
    lines.append(f"| **total** | **{human_size(total)}** |")
    return lines


def _fidelity(report: dict[str, Any]) -> list[str]:
    fid = report.get("fidelity")
    if not fid:
        return []
    if fid.get("skipped"):
        return ["**Fidelity check:** not checked (skipped on request)."]
    verdict = "✓ pass" if fid.get("passed") else "✗ fail"
    change = fid.get("ppl_change_pct")
    change_text = f"{change:+.2f}%" if isinstance(change, (int, float)) else "?"
    return [
        f"**Fidelity** (teacher-forced next-token agreement with the merged model over {fid.get('n_tokens', '?')} "
        f"tokens, backend `{fid.get('backend', '?')}`):",
        "",
        "| top-1 agreement | target | perplexity (HF → GGUF) | change | result |",
        "|---:|---:|---:|---:|---|",
        f"| {fid.get('agreement', 0):.2%} | {fid.get('target', 0):.0%} | {fid.get('ppl_reference')} → "
        f"{fid.get('ppl_gguf')} | {change_text} | {verdict} |",
    ]


def _how_to_run(report: dict[str, Any]) -> list[str]:
    name = ollama_name(str(report.get("name") or "model"))
    if report.get("format") == "gguf" and report.get("gguf"):
        gguf = report["gguf"]["path"]
        lines = ["**Run it:**", "", "```shell"]
        if report.get("modelfile"):
            lines += [f"ollama create {name} -f {report['modelfile']}", f"ollama run {name}"]
        lines += [f"llama-cli -m {gguf} -cnv", f"llama-server -m {gguf} --port 8080", "```"]
        return lines
    folder = report.get("output_dir") or report.get("merged_dir")
    return ["**Use it:**", "", "```shell", f"ftstudio chat --model {folder}", f"ftstudio api --model {folder}",
            f"ftstudio export {folder} --format gguf --quant q8_0 --output {folder}-gguf", "```"]


def report_markdown(report: dict[str, Any], error: str | None = None) -> str:
    """The report pipeline.export() returns (or wrote before failing) as Markdown."""
    what = str(report.get("format", "?")).upper() if report.get("format") != "gguf" else f"GGUF {report.get('quant')}"
    ok = error is None and report.get("passed") is not False  # None: exported, fidelity not checked
    head = f"### {'✓ Exported' if ok else '✗ Export failed'}: {report.get('name', '?')} → {what}"
    lines = [head, ""]
    if error:
        lines += [f"> {line}" for line in error.splitlines()] + [""]
    lines += [f"Output folder: `{report.get('output_dir', '?')}`", ""]
    lines += _files_table(report) + [""]
    lines += _fidelity(report) + [""]
    if report.get("modelfile"):
        lines += [f"**Ollama Modelfile:** `{report['modelfile']}`", ""]
    if ok:
        lines += _how_to_run(report) + [""]
    timings = report.get("timings_s") or {}
    if timings:
        lines.append("Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return "\n".join(lines).strip() + "\n"


def error_markdown(message: str) -> str:
    return "### ✗ Export failed\n\n" + "\n".join(f"> {line}" for line in message.splitlines()) + "\n"
