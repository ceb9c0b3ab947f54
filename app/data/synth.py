"""Synthetic instruction data: prompts for each recipe, cleaning, de-duplication, validation, registration.

No model here: the caller passes a `Generate` function (app.synth.generators wraps the local ChatEngine
or an OpenAI-compatible endpoint), so the loop runs the same for both and a test can drive it.

Recipes, each in two steps so that even a small model only ever does one simple thing at a time:
  self_instruct  "write one question about <topic>" (shown the last questions of that topic, to vary),
                 then the question is asked as is, with the row's system prompt: that reply is the answer
  passage_qa     "write one question this passage answers", then "answer from the passage"
  bilingual      a self_instruct (topics) or passage_qa (documents) row, then question and answer are
                 translated into Simplified Chinese: two parallel rows

Every candidate row goes through the same gates, in order: cleaning (first line of a question, "Q:" /
"Answer:" labels off), answers cut off at max_new_tokens dropped (unless kept on purpose), exact
duplicates (case- and whitespace-folded instruction), near-duplicates (RapidFuzz `fuzz.ratio` of the
instruction against every kept one, >= near_duplicate_threshold), and the catalogue's own row
validation (app.data.formats.convert_row, as `ftstudio data check` runs it). Kept rows are rewritten
atomically after each one, so a stop or a crash keeps everything made so far.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from app.atomic import write_json_atomic
from app.config.generate import GenerateConfig
from app.data.catalogue import DatasetSpec, parse_entry, register_dataset
from app.data.documents import Passage
from app.data.errors import Problem
from app.data.formats import _Row, convert_row

ATTEMPTS_PER_ROW = 4  # give up after num_rows x this many candidates (a generator that only repeats itself)
QUESTION_TOKENS = 128  # a question longer than this is not one question
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}

QUESTION_FROM_TOPIC = ("Write one question or instruction that a user could ask an AI assistant about this "
                       "topic: {topic}\n{avoid}Reply with the question only, in {language}.")
QUESTION_FROM_PASSAGE = ("Read this passage:\n\n{passage}\n\nWrite one question that this passage answers. "
                         "{avoid}Reply with the question only, in {language}.")
AVOID = "It must be different from these:\n{previous}\n"
ANSWER_FROM_PASSAGE = ("Answer the question using only the passage below.\n\nPassage:\n{passage}\n\n"
                       "Question: {question}")
TRANSLATE = ("Translate the following text into Simplified Chinese. Reply with the translation only.\n\n{text}")

_LABEL = re.compile(r"^\s*(?:\d+[.)]\s*|[-*•]\s*|(?:question|q|instruction|answer|a|问题|回答|答案)\s*[:：]\s*)",
                    re.IGNORECASE)
_SPACE = re.compile(r"\s+")


class Reply(NamedTuple):
    text: str
    truncated: bool  # the generator stopped at max_new_tokens, not at the end of its turn


# messages, temperature, max_new_tokens -> reply
Generate = Callable[[list[dict[str, str]], float, int], Reply]


@dataclass
class Progress:
    target: int
    kept: int = 0
    attempts: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> candidates dropped
    last: dict[str, str] | None = None

    def event(self) -> dict[str, Any]:
        """The fields of a `progress` event."""
        last = {k: v[:200] for k, v in self.last.items()} if self.last else None
        return {"step": self.kept, "total_steps": self.target, "attempts": self.attempts,
                "dropped": dict(self.dropped), "last": last}


def clean_question(text: str) -> str:
    """The first non-empty line, without list markers, labels or wrapping quotes."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line).strip()
    return line.strip("\"'“”「」").strip()


def clean_answer(text: str) -> str:
    return _LABEL.sub("", text.strip(), count=1).strip() if re.match(r"^\s*(answer|a|回答|答案)\s*[:：]", text,
                                                                      re.IGNORECASE) else text.strip()


def _fold(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


class Deduplicator:
    """Exact (folded text) and near (RapidFuzz ratio >= threshold) duplicates of the instructions kept."""

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold
        self.kept: list[str] = []
        self._exact: set[str] = set()

    def check(self, instruction: str) -> str | None:
        """"exact" or "near" when `instruction` repeats a kept one, else None (not added: see `add`)."""
        from rapidfuzz import fuzz, process

        folded = _fold(instruction)
        if folded in self._exact:
            return "exact"
        if self.kept and process.extractOne(folded, self.kept, scorer=fuzz.ratio,
                                            score_cutoff=self.threshold * 100) is not None:
            return "near"
        return None

    def add(self, instruction: str) -> None:
        folded = _fold(instruction)
        self._exact.add(folded)
        self.kept.append(folded)


def dedupe(instructions: list[str], threshold: float = 0.9) -> list[int]:
    """Indexes of the instructions kept when each is checked against the ones kept before it."""
    seen = Deduplicator(threshold)
    kept = []
    for i, text in enumerate(instructions):
        if seen.check(text) is None:
            seen.add(text)
            kept.append(i)
    return kept


def _probe_spec(system: bool) -> DatasetSpec:
    columns = COLUMNS | ({"system": "system"} if system else {})
    return parse_entry("generated", {"file_name": "generated.json", "columns": columns}, Path("."))


def row_problems(row: dict[str, str], where: str = "generated") -> list[Problem]:
    """What the catalogue's validation says about one alpaca row ([] when it would load)."""
    problems: list[Problem] = []
    convert_row(_probe_spec("system" in row), "sft", row, _Row(where, 1, problems))
    return problems


@dataclass
class Seed:
    topic: str | None = None
    passage: Passage | None = None

    @property
    def label(self) -> str:
        return self.topic if self.topic is not None else f"{self.passage.source} #{self.passage.index}"


def seeds(config: GenerateConfig, passages: list[Passage]) -> Iterator[Seed]:
    """Seeds in a seeded shuffled order, cycled: every topic/passage is used once before any twice."""
    if config.recipe == "passage_qa" or (config.recipe == "bilingual" and passages):
        pool = [Seed(passage=p) for p in passages]
    else:
        pool = [Seed(topic=t) for t in config.topic_list]
    rng = random.Random(config.seed)
    while pool:
        order = pool[:]
        rng.shuffle(order)
        yield from order


class Synthesizer:
    """Runs a recipe against a generator until `num_rows` rows are kept, attempts run out, or a stop."""

    def __init__(self, config: GenerateConfig, generate: Generate, passages: list[Passage] | None = None,
                 rows_file: Path | None = None):
        self.config = config
        self.generate = generate
        self.passages = passages or []
        self.rows_file = rows_file
        self.rows: list[dict[str, str]] = []
        self.dedup = Deduplicator(config.near_duplicate_threshold)
        self.progress = Progress(target=config.num_rows)
        self._previous: dict[str, list[str]] = {}  # seed label -> its recent questions

    def run(self, should_stop: Callable[[], bool] = lambda: False,
            on_progress: Callable[[Progress], None] = lambda p: None) -> list[dict[str, str]]:
        limit = self.config.num_rows * ATTEMPTS_PER_ROW
        for seed in seeds(self.config, self.passages):
            if len(self.rows) >= self.config.num_rows or self.progress.attempts >= limit or should_stop():
                break
            self.progress.attempts += 1
            for row in self._candidates(seed, should_stop):
                if len(self.rows) < self.config.num_rows:
                    self._offer(row)
            on_progress(self.progress)
        return self.rows

    # -- one seed -> candidate rows ---------------------------------------------------------------
    def _ask(self, content: str, max_new_tokens: int, system: bool = False) -> Reply:
        messages = [{"role": "system", "content": self.config.system}] if system and self.config.system else []
        return self.generate(messages + [{"role": "user", "content": content}], self.config.temperature,
                             max_new_tokens)

    def _candidates(self, seed: Seed, should_stop: Callable[[], bool]) -> list[dict[str, str]]:
        english = self._english_row(seed)
        if english is None or self.config.recipe != "bilingual" or should_stop():
            return [english] if english else []
        out = [english]
        question = self._translate(english["instruction"], QUESTION_TOKENS)
        answer = self._translate(english["output"], self.config.max_new_tokens) if question else None
        if question and answer:
            out.append(self._row(question, answer, english["input"]))
        return out

    def _english_row(self, seed: Seed) -> dict[str, str] | None:
        previous = self._previous.setdefault(seed.label, [])
        avoid = AVOID.format(previous="\n".join(f"- {q}" for q in previous[-3:])) if previous else ""
        if seed.passage is not None:
            prompt = QUESTION_FROM_PASSAGE.format(passage=seed.passage.text, avoid=avoid, language="English")
        else:
            prompt = QUESTION_FROM_TOPIC.format(topic=seed.topic, avoid=avoid, language="English")
        reply = self._ask(prompt, min(QUESTION_TOKENS, self.config.max_new_tokens))
        question = clean_question(reply.text)
        # Cut off mid-line, the question is unfinished; cut off after its first line, it is whole.
        unfinished = reply.truncated and "\n" not in reply.text.strip() and not self.config.keep_truncated
        if not question or unfinished:
            self.progress.dropped["no question" if not question else "question too long"] += 1
            return None
        previous.append(question)
        if seed.passage is not None:
            answer = self._ask(ANSWER_FROM_PASSAGE.format(passage=seed.passage.text, question=question),
                               self.config.max_new_tokens, system=True)
        else:
            answer = self._ask(question, self.config.max_new_tokens, system=True)
        if answer.truncated and not self.config.keep_truncated:
            self.progress.dropped["answer cut at max_new_tokens"] += 1
            return None
        context = seed.passage.text if seed.passage is not None and self.config.include_passage else ""
        return self._row(question, clean_answer(answer.text), context)

    def _translate(self, text: str, max_new_tokens: int) -> str | None:
        reply = self._ask(TRANSLATE.format(text=text), max_new_tokens)
        if reply.truncated and not self.config.keep_truncated:
            self.progress.dropped["translation cut at max_new_tokens"] += 1
            return None
        return clean_question(reply.text) if "\n" not in text else reply.text.strip()

    def _row(self, instruction: str, output: str, context: str) -> dict[str, str]:
        row = {"instruction": instruction, "input": context, "output": output}
        if self.config.system:
            row["system"] = self.config.system
        return row

    # -- gates -----------------------------------------------------------------------------------
    def _offer(self, row: dict[str, str]) -> bool:
        duplicate = self.dedup.check(row["instruction"])
        if duplicate:
            self.progress.dropped[f"{duplicate} duplicate"] += 1
            return False
        if row_problems(row):
            self.progress.dropped["invalid (empty question or answer)"] += 1
            return False
        self.dedup.add(row["instruction"])
        self.rows.append(row)
        self.progress.kept = len(self.rows)
        self.progress.last = {"instruction": row["instruction"], "output": row["output"]}
        if self.rows_file is not None:
            write_json_atomic(self.rows_file, self.rows)
        return True


def register_rows(rows_file: Path, config: GenerateConfig) -> DatasetSpec:
    """Add the generated alpaca file to the catalogue (validated; the catalogue is replaced atomically)."""
    columns = COLUMNS | ({"system": "system"} if config.system else {})
    return register_dataset(config.dataset_dir, config.dataset_name, rows_file, formatting="alpaca",
                            columns=columns, overwrite=config.overwrite)
