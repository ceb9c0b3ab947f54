"""The typed synthetic-data job: which generator writes rows, from which seeds, into which catalogue set.

`ftstudio data generate runs/<run>/generate.yaml` (or flags) runs one; the Dataset tab's Generate panel
builds the same config and the job manager spawns that command. The result is an alpaca set registered
in the catalogue under `dataset_name`.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from app.config.schema import Schema, param

RECIPES = ("self_instruct", "passage_qa", "bilingual")
GENERATE_GROUPS = {
    "generator": "Generator",
    "source": "Source",
    "generation": "Generation",
    "output": "Output",
}


@dataclass
class GenerateConfig(Schema):
    COMMAND: ClassVar[str] = "data generate"
    FILE_NAME: ClassVar[str] = "generate.yaml"

    # generator
    model_name_or_path: str | None = param(
        None, "Generator base model: a local folder, a Hugging Face id, or empty for the embedded "
        "SmolLM2-135M-Instruct (ignored when api_base is set).", "generator")
    adapter_name_or_path: str | None = param(
        None, "A training run (runs/<name>) or adapter folder to generate with; empty = the base alone.",
        "generator")
    api_base: str | None = param(
        None, "An OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) to generate with instead of a "
        "local model.", "generator")
    api_model: str | None = param(None, "The model id to ask the endpoint for.", "generator")
    api_key_env: str = param(
        "OPENAI_API_KEY", "Name of the environment variable holding the endpoint's key (the key itself is "
        "never written to the job file).", "generator")
    # source
    recipe: str = param(
        "self_instruct", "self_instruct: questions about the seed topics, then their answers; passage_qa: a "
        "question each passage answers, then the answer from that passage; bilingual: either of those, each "
        "row also translated into Chinese as a second row.", "source", choices=RECIPES)
    topics: str | None = param(None, "Seed topics, one per line (or separated by ';').", "source")
    documents: str | None = param(None, "Files or folders of .txt, .md (and .pdf with pypdf installed), separated by "
                               "';' or new lines; cut into passages.", "source")
    passage_chars: int = param(1200, "Longest passage cut from a document, in characters.", "source", minimum=100)
    include_passage: bool = param(
        False, "passage_qa: put the passage in each row's input column (reading comprehension) instead of "
        "training the answer without it (knowledge).", "source")
    # generation
    num_rows: int = param(50, "Rows to generate (duplicates and failures are retried, up to 4x this many "
                              "attempts).", "generation", minimum=1)
    temperature: float = param(0.8, "Sampling temperature of the generator; 0 = greedy.", "generation", minimum=0)
    max_new_tokens: int = param(256, "Longest generated question or answer, in tokens.", "generation", minimum=8)
    keep_truncated: bool = param(False, "Keep questions and answers cut off at max_new_tokens (dropped by default).",
                                 "generation")
    near_duplicate_threshold: float = param(
        0.9, "Drop a row whose instruction is at least this similar (0-1) to a kept one.", "generation",
        minimum=0.5, maximum=1)
    system: str | None = param(None, "A system prompt stored with every row (and used while generating answers).",
                        "generation")
    seed: int = param(42, "Random seed (topic order and sampling).", "generation")
    # output
    dataset_name: str = param("synthetic", "Catalogue name of the generated set.", "output")
    dataset_dir: str = param(".", "Folder holding dataset_info.json.", "output")
    overwrite: bool = param(False, "Replace an existing catalogue entry of that name.", "output")
    output_dir: str | None = param(None, "Run folder (empty = runs/generate-<time>).", "output")

    @property
    def datasets(self) -> list[str]:
        """The set this job writes (what the run list shows in its dataset column)."""
        return [self.dataset_name]

    @property
    def topic_list(self) -> list[str]:
        return _split(self.topics)

    @property
    def document_list(self) -> list[str]:
        return _split(self.documents)

    def problems(self) -> list[str]:
        out = []
        if not self.dataset_name.strip():
            out.append("dataset_name: give the generated set a name")
        if self.recipe == "passage_qa" and not self.document_list:
            out.append("documents: passage_qa needs at least one document")
        if self.recipe == "self_instruct" and not self.topic_list:
            out.append("topics: self_instruct needs at least one seed topic")
        if self.recipe == "bilingual" and not (self.topic_list or self.document_list):
            out.append("topics: bilingual needs seed topics or documents")
        if self.api_base and not self.api_model:
            out.append("api_model: name the model to ask the endpoint for")
        return out

    def with_run_folder(self, runs_root: str | Path = "runs") -> GenerateConfig:
        """A copy whose output_dir, dataset_dir and documents are absolute, naming a new run when empty."""
        out = self.output_dir or str(Path(runs_root) / f"generate-{time.strftime('%Y%m%d-%H%M%S')}")
        documents = "\n".join(str(Path(d).expanduser().resolve()) for d in self.document_list) or None
        return self.replace(output_dir=str(Path(out).expanduser().resolve()), documents=documents,
                            dataset_dir=str(Path(self.dataset_dir).expanduser().resolve()))

    def command_line(self) -> str:
        # COMMAND is two words: `ftstudio data generate --flag value ...`
        return shlex.join(["ftstudio", *self.COMMAND.split(), *self.cli_args()])


def _split(text: str | None) -> list[str]:
    return [part.strip() for line in (text or "").splitlines() for part in line.split(";") if part.strip()]
