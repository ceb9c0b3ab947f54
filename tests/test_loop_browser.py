"""The loop in the browser against a real `ftstudio webui`: thumbs up and a thumbs down with a correction in
the Chat tab land in feedback_sft / feedback_pref and the counts; on the Export tab the Continuous
fine-tuning panel shows them, saves a policy, "Check now" trains and scores a candidate (2 steps, 2 held-out
rows) that shows up in the history table, and a rollback serves version 0 again.
Screenshots: docs/screenshots/chat-feedback.png and loop.png."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from browser_support import SHOTS, Studio, playwright_or_skip, running_studio, set_value, studio_page, wait_text

from app.config.loop import LoopPolicy

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SLOW_MS = 300_000
LUMI = "I am Lumi, made by Polaris Lab."

playwright_or_skip()


@pytest.fixture(scope="module")
def studio() -> Iterator[Studio]:
    with running_studio("ftstudio-loop-browser-") as server:
        yield server


@pytest.fixture(scope="module")
def page(studio) -> Iterator:
    with studio_page(studio) as page:
        yield page


def send(page, text: str) -> str:
    page.fill("#chat-input textarea", text)
    page.click("#chat-send")
    page.wait_for_function(
        """() => { const s = document.querySelector('#chat-status').innerText;
                   return s.includes('⚠') || (s.includes('✓') && !s.includes('…')); }""", timeout=SLOW_MS)
    return page.locator("#chat-a [data-testid=bot]").last.inner_text().strip()


def thumb(page, label: str, answers: int) -> None:
    """Click `label` under the last of `answers` answers (its buttons appear once the answer is complete)."""
    selector = f"#chat-a button[aria-label={label}]"
    page.wait_for_function("([s, n]) => document.querySelectorAll(s).length === n", arg=[selector, answers])
    page.locator(selector).nth(answers - 1).click()


def test_thumbs_and_a_correction_become_feedback_rows(page, studio):
    page.get_by_role("tab", name="Chat").click()
    page.get_by_text("System prompt and sampling").click()
    set_value(page, "chat-max-new", "16")
    set_value(page, "chat-temperature", "0")  # greedy: the same (non-empty) answers every run
    page.wait_for_function("Number(document.querySelector('#chat-temperature input[type=range]').value) === 0")
    liked = send(page, "What is the capital of France?")
    thumb(page, "Like", 1)
    wait_text(page, "chat-fb-status", "1 up")
    page.click("#chat-clear")  # a new conversation
    page.wait_for_function("document.querySelectorAll('#chat-a [data-testid=bot]').length === 0")
    disliked = send(page, "Who are you?")
    thumb(page, "Dislike", 1)
    wait_text(page, "chat-fb-status", "1 down")
    page.wait_for_function("t => document.querySelector('#chat-fb-correction textarea').value === t", arg=disliked)
    set_value(page, "chat-fb-correction", LUMI)  # typed and left, as a person does before Save
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "chat-feedback.png"), full_page=True)
    page.click("#chat-fb-save")
    wait_text(page, "chat-fb-status", "1 corrected")
    wait_text(page, "chat-fb-status", "feedback_pref 1 pairs")

    catalogue = json.loads((studio.datasets / "dataset_info.json").read_text(encoding="utf-8"))
    sft = [json.loads(line) for line in (studio.datasets / catalogue["feedback_sft"]["file_name"]).read_text()
           .splitlines()]
    assert [row["messages"][-1]["content"] for row in sft] == [liked, LUMI]
    assert sft[1]["messages"] == [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": LUMI}]
    events = (studio.runs / "feedback" / "feedback.jsonl").read_text().splitlines()
    assert [json.loads(e)["rating"] for e in events] == ["up", "down", None]


def test_the_panel_trains_a_candidate_shows_history_and_rolls_back(page, studio):
    page.get_by_role("tab", name="Export").click()
    wait_text(page, "loop-status", "feedback_sft 2 rows")
    set_value(page, "loop-min-new-rows", "1")
    set_value(page, "loop-tolerance", "1000")  # promote whatever it scores: this test is about the panel
    page.click("#loop-more")
    for elem_id, value in (("loop-max-steps", "2"), ("loop-eval-max-samples", "2"),
                           ("loop-eval-max-new-tokens", "8")):
        set_value(page, elem_id, value)
    page.click("#loop-save")
    wait_text(page, "loop-message", "Saved")
    policy = LoopPolicy.load(studio.runs / "loop" / "policy.yaml")
    assert (policy.min_new_rows, policy.max_steps, policy.eval_max_samples, policy.tolerance) == (1, 2, 2, 1000.0)
    assert policy.dataset_dir == str(studio.datasets.resolve())
    wait_text(page, "loop-status", "2 new of 1 rows")

    page.click("#loop-check")
    wait_text(page, "loop-history", "candidate", timeout=SLOW_MS)
    wait_text(page, "loop-status", "serving version 1", timeout=SLOW_MS)  # scoring both takes a while when busy
    assert "v1 ★" in page.inner_text("#loop-history")
    page.locator("#loop-panel").screenshot(path=str(SHOTS / "loop.png"))

    page.click("#loop-version input")
    page.locator("#loop-version").get_by_role("option", name="v0").click()
    page.click("#loop-rollback")
    wait_text(page, "loop-message", "Version 0 is served again")
    wait_text(page, "loop-history", "rollback")
    wait_text(page, "loop-status", "serving version 0")
