"""Feedback on answers, kept append-only, and the training rows it yields.

    runs/feedback/feedback.jsonl            every thumbs up/down and correction, one JSON line each (the record)
    <dataset_dir>/data/feedback_sft*.jsonl  set `feedback_sft`: a correction, or an up-voted answer, after its prompt
    <dataset_dir>/data/feedback_pref*.jsonl set `feedback_pref`: preference pairs, ranking: true
                                            - a correction is chosen over the answer it corrects
                                            - an up-voted answer (or a correction) is chosen over a down-voted
                                              answer to the same prompt, whichever came first

Both sets are registered in dataset_info.json with their first row and train directly
(`ftstudio train --dataset feedback_sft`, `--stage dpo --dataset feedback_pref`). The Chat tab (thumbs on
each answer, a correction box) and the API (`POST /v1/feedback`) both record through `FeedbackStore`.
Rows that would not train (a conversation that does not alternate, say) are not written; the feedback
line still is, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.filelock import file_lock
from app.loop.rows import (
    Message,
    SetError,
    append_rows,
    count_rows,
    plain_messages,
    pref_row,
    read_set_rows,
    row_problems,
    sft_row,
)

RATINGS = ("up", "down")
FEEDBACK_SFT = "feedback_sft"
FEEDBACK_PREF = "feedback_pref"
SET_OF_METHOD = {"sft": FEEDBACK_SFT, "dpo": FEEDBACK_PREF}
EVENTS_FILE = "feedback.jsonl"
MAX_TEXT = 100_000  # characters of one answer or correction


class FeedbackError(ValueError):
    """Feedback that cannot be recorded; the message says what is wrong."""


@dataclass
class Recorded:
    id: str
    sft_rows: int  # rows this feedback added to feedback_sft
    pairs: int  # pairs it added to feedback_pref
    note: str | None = None  # why it added no row, when it added none


@dataclass
class FeedbackCounts:
    events: int = 0
    up: int = 0
    down: int = 0
    corrections: int = 0
    sft_rows: int = 0
    pref_rows: int = 0


def prompt_key(prompt: list[Message]) -> str:
    text = json.dumps([[m["role"], m["content"].strip()] for m in prompt], ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _row_key(row: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


class FeedbackStore:
    def __init__(self, folder: str | Path, dataset_dir: str | Path):
        self.folder = Path(folder)
        self.dataset_dir = Path(dataset_dir)
        self.events_file = self.folder / EVENTS_FILE

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.folder / ".feedback.lock"):
            yield

    # -- recording ---------------------------------------------------------------------------------
    def record(self, messages: list[dict[str, Any]], answer: str, rating: str | None = None,
               correction: str | None = None, model: str = "", source: str = "chat",
               completion_id: str | None = None) -> Recorded:
        """Store one piece of feedback on `answer` (the reply to `messages`) and the rows it yields."""
        prompt, answer, rating, correction = _checked(messages, answer, rating, correction)
        event = {"id": f"fb-{uuid.uuid4().hex[:20]}", "t": round(time.time(), 3), "source": source, "model": model,
                 "completion_id": completion_id, "rating": rating, "correction": correction, "messages": prompt,
                 "answer": answer}
        with self._locked():
            earlier = [e for e in self.events() if e.get("key") == prompt_key(prompt)]
            sft, pairs, note = self._rows(prompt, answer, rating, correction, earlier)
            written, note = self._write(sft, pairs, note)
            event |= {"key": prompt_key(prompt), "sft_rows": written[0], "pairs": written[1], "note": note}
            with open(self.events_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(event, ensure_ascii=False) + "\n")  # one whole line per write
                handle.flush()
        return Recorded(event["id"], written[0], written[1], note)

    def _rows(self, prompt: list[Message], answer: str, rating: str | None, correction: str | None,
              earlier: list[dict[str, Any]]) -> tuple[list[dict], list[dict], str | None]:
        sft: list[dict] = []
        pairs: list[dict] = []
        if correction is not None:
            sft.append(sft_row(prompt, correction))
            if answer:  # an empty answer is no rejected reply to learn from
                pairs.append(pref_row(prompt, correction, answer))
            good = correction
        elif rating == "up":
            sft.append(sft_row(prompt, answer))
            good = answer
        else:
            good = None
        if good is not None:  # the good answer beats every down-voted answer to the same prompt
            pairs += [pref_row(prompt, good, e["answer"]) for e in earlier
                      if e.get("rating") == "down" and e["answer"] != good]
        elif rating == "down":  # the down-voted answer loses to the latest good one, if any
            goods = [e.get("correction") or e["answer"] for e in earlier
                     if e.get("correction") or e.get("rating") == "up"]
            if goods and goods[-1] != answer:
                pairs.append(pref_row(prompt, goods[-1], answer))
        note = None
        for stage, rows in (("sft", sft), ("dpo", pairs)):
            bad = [problem for row in rows for problem in row_problems(row, stage)]
            if bad:
                rows.clear()
                note = f"not a trainable {stage} row: {bad[0].message}"
        if not sft and not pairs and note is None:
            note = "a down-vote with nothing better for this prompt yet: a pair follows with a correction or an " \
                   "up-voted answer to the same prompt"
        return sft, pairs, note

    def _write(self, sft: list[dict], pairs: list[dict], note: str | None) -> tuple[tuple[int, int], str | None]:
        counts = []
        for name, stage, rows in ((FEEDBACK_SFT, "sft", sft), (FEEDBACK_PREF, "dpo", pairs)):
            seen = {_row_key(r) for r in read_set_rows(self.dataset_dir, name)} if rows else set()
            fresh = []
            for row in rows:
                if _row_key(row) not in seen:
                    seen.add(_row_key(row))
                    fresh.append(row)
            if fresh:
                try:
                    append_rows(self.dataset_dir, name, stage, fresh)
                except SetError as exc:
                    note, fresh = str(exc), []
            counts.append(len(fresh))
        return (counts[0], counts[1]), note

    # -- reading -----------------------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.is_file():
            return []
        out = []
        for line in self.events_file.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line from a crash
        return out

    def counts(self) -> FeedbackCounts:
        counts = FeedbackCounts(sft_rows=count_rows(self.dataset_dir, FEEDBACK_SFT),
                                pref_rows=count_rows(self.dataset_dir, FEEDBACK_PREF))
        for event in self.events():
            counts.events += 1
            counts.up += event.get("rating") == "up"
            counts.down += event.get("rating") == "down"
            counts.corrections += bool(event.get("correction"))
        return counts


def _checked(messages: Any, answer: Any, rating: Any, correction: Any) -> tuple[list[Message], str, str | None,
                                                                                 str | None]:
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise FeedbackError("messages: the conversation the answer replies to, as a list of {role, content}.")
    prompt = plain_messages(messages)
    if prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
        raise FeedbackError("messages: the conversation must end with the user's message that the answer replies to.")
    if not isinstance(answer, str):
        raise FeedbackError("answer: the answer that is rated, as text.")
    if rating is not None and rating not in RATINGS:
        raise FeedbackError(f"rating: 'up' or 'down', got {rating!r}.")
    if correction is not None and not isinstance(correction, str):
        raise FeedbackError("correction: the corrected answer, as text.")
    correction = (correction or "").strip() or None
    if len(answer) > MAX_TEXT or len(correction or "") > MAX_TEXT:
        raise FeedbackError(f"answer/correction: at most {MAX_TEXT} characters.")
    if correction is not None and correction == answer.strip():
        correction, rating = None, "up"  # "corrected" into itself: the answer was right
    if rating is None and correction is None:
        raise FeedbackError("Give a rating ('up' or 'down'), a corrected answer, or both.")
    if not answer.strip() and correction is None:
        raise FeedbackError("answer: the answer is empty, so there is nothing to rate: send the answer it should "
                            "have been as a correction.")
    return prompt, answer.strip(), rating, correction
