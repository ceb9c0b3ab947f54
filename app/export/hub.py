"""Push an adapter or a merged model to the Hugging Face Hub, with a model card (huggingface_hub).

    push_to_hub("runs/lumi", "me/lumi-lora")               # the run's adapter + tokenizer + README.md
    push_to_hub("exports/lumi", "me/lumi", private=True)   # a merged safetensors (or GGUF) export

The token comes from `token=`, else HF_TOKEN or the `hf auth login` cache; HF_ENDPOINT is honoured.
Offline (HF_HUB_OFFLINE, no network, a dead endpoint) the error names the repository id and says why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from app.export.errors import ExportError, Progress, report

CARD_NAME = "README.md"


def upload_folder_of(source: str | Path) -> tuple[Path, str]:
    """(folder to upload, what it is) for a run folder, an adapter folder, a model folder or an export."""
    path = Path(source).expanduser()
    if (path / "adapter").is_dir():
        path = path / "adapter"
    elif (path / "merged" / "config.json").is_file() and not any(path.glob("*.gguf")):
        path = path / "merged"
    if (path / "adapter_config.json").is_file():
        return path, "adapter"
    if (path / "config.json").is_file():
        return path, "model"
    if any(path.glob("*.gguf")):
        return path, "gguf"
    raise ExportError(f"{path} holds no adapter (adapter_config.json), model (config.json) or GGUF to push")


def model_card(folder: Path, kind: str, repo_id: str) -> str:
    """A short model card: what it is, the base, the training job when the folder came from a run."""
    base = None
    if kind == "adapter":
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    job_file = folder.parent / "job.yaml"
    job = job_file.read_text(encoding="utf-8") if job_file.is_file() else None
    base_line = f"base_model: {base}\n" if base and "/" in str(base) and not Path(str(base)).exists() else ""
    tags = {"adapter": "- peft\n- lora\n", "model": "", "gguf": "- gguf\n"}[kind]
    lines = [
        "---", f"library_name: {'peft' if kind == 'adapter' else 'transformers'}", base_line.rstrip("\n"),
        "tags:", "- finetune-studio", tags.rstrip("\n"), "---", "", f"# {repo_id.split('/')[-1]}", "",
        {"adapter": "A LoRA adapter", "model": "A fine-tuned model (merged, safetensors)",
         "gguf": "A fine-tuned model in GGUF for llama.cpp and Ollama"}[kind]
        + " trained with Finetune Studio.",
    ]
    if base:
        lines += ["", f"Base model: `{base}`."]
    report_file = folder / "export_report.json"
    if report_file.is_file():
        fid = json.loads(report_file.read_text(encoding="utf-8")).get("fidelity") or {}
        if fid.get("agreement") is not None:
            lines += ["", f"GGUF fidelity: top-1 agreement {fid['agreement']:.2%} with the merged model "
                          f"(perplexity {fid.get('ppl_reference')} -> {fid.get('ppl_gguf')})."]
    if job:
        lines += ["", "## Training job", "", "```yaml", job.rstrip(), "```"]
    return "\n".join(line for line in lines if line is not None) + "\n"


def push_to_hub(source: str | Path, repo_id: str, token: str | None = None, private: bool = False,
                progress: Progress | None = None) -> str:
    """Create (or reuse) model repository `repo_id` and upload the folder with a model card; returns its URL."""
    repo_id = (repo_id or "").strip()
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ExportError(f"push to hub: repository id must look like user/name, got {repo_id!r}")
    folder, kind = upload_folder_of(source)
    from huggingface_hub import HfApi

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    api = HfApi(endpoint=endpoint, token=token or None)
    card = model_card(folder, kind, repo_id)
    try:
        report(progress, 0.05, f"creating {repo_id} on {endpoint}")
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        report(progress, 0.2, f"uploading {kind} from {folder}")
        api.upload_file(path_or_fileobj=card.encode("utf-8"), path_in_repo=CARD_NAME, repo_id=repo_id)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload from Finetune Studio",
                                 ignore_patterns=["checkpoint-*", "*.partial", "README.md", "merged/*"])
    except Exception as exc:  # noqa: BLE001 - offline, auth, network: one message naming the repository
        raise ExportError(hub_error(repo_id, endpoint, exc)) from None
    report(progress, 1.0, f"pushed to {repo_id}")
    return str(getattr(info, "commit_url", None) or f"{endpoint}/{repo_id}")


def hub_error(repo_id: str, endpoint: str, exc: Any) -> str:
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    why = " (HF_HUB_OFFLINE is set)" if offline else ""
    return (f"cannot push to hub repository {repo_id!r} at {endpoint}{why}: {type(exc).__name__}: {reason}. "
            "Check the network (or HF_ENDPOINT) and the token (HF_TOKEN or `hf auth login`)")
