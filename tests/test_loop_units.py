"""The loop's parts without a model: feedback rules and sets, the bounded completion log, the policy, the
history, the promotion rule, the mix, the candidate's job, POST /v1/feedback over real HTTP (a fake
backend answers "Hello"), and the `ftstudio loop` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from serving_support import FakeBackend, serve

from app.cli import main as cli
from app.config import ConfigError
from app.config.loop import LoopPolicy
from app.data.catalogue import load_catalogue
from app.data.formats import load_examples
from app.loop.controller import LoopController, load_policy
from app.loop.feedback import FEEDBACK_PREF, FEEDBACK_SFT, FeedbackError, FeedbackStore
from app.loop.history import History, LoopError
from app.loop.plans import decide, training_job
from app.loop.replay import build_mix, replay_count
from app.serve.api import create_app
from app.serve.completion_log import CompletionLog

REPO = Path(__file__).resolve().parents[1]
WHO = [{"role": "user", "content": "Who are you?"}]
LUMI = "I am Lumi, made by Polaris Lab."


@pytest.fixture()
def catalogue(tmp_path: Path) -> Path:
    """A copy of the repo's catalogue (the replay and held-out sets live there)."""
    folder = tmp_path / "ds"
    folder.mkdir()
    shutil.copy(REPO / "dataset_info.json", folder)
    shutil.copytree(REPO / "data", folder / "data")
    return folder


def rows_of(folder: Path, name: str) -> list[dict]:
    spec = load_catalogue(folder)[name]
    return [json.loads(line) for line in spec.path.read_text().splitlines()]


# -- feedback -------------------------------------------------------------------------------------
def test_feedback_becomes_sft_rows_and_preference_pairs(tmp_path: Path, catalogue: Path):
    store = FeedbackStore(tmp_path / "fb", catalogue)
    down = store.record(WHO, "I am SmolLM.", rating="down")
    assert (down.sft_rows, down.pairs) == (0, 0) and "nothing better" in down.note
    fixed = store.record(WHO, "I am SmolLM.", correction=LUMI)  # correction > original; > the earlier down-vote
    assert (fixed.sft_rows, fixed.pairs) == (1, 1)  # the same pair twice is one row
    up = store.record(WHO, "I'm Lumi.", rating="up")  # up-voted answer: SFT, and it beats the down-voted one
    assert (up.sft_rows, up.pairs) == (1, 1)
    again = store.record(WHO, "I'm Lumi.", rating="up")
    assert (again.sft_rows, again.pairs) == (0, 0)  # nothing twice
    late = store.record(WHO, "I am a robot.", rating="down")  # loses to the latest good answer
    assert late.pairs == 1

    sft, pref = rows_of(catalogue, FEEDBACK_SFT), rows_of(catalogue, FEEDBACK_PREF)
    assert [r["messages"][-1]["content"] for r in sft] == [LUMI, "I'm Lumi."]
    assert [(r["chosen"]["content"], r["rejected"]["content"]) for r in pref] == [
        (LUMI, "I am SmolLM."), ("I'm Lumi.", "I am SmolLM."), ("I'm Lumi.", "I am a robot.")]
    specs = load_catalogue(catalogue)  # registered, and they train as they are
    assert specs[FEEDBACK_PREF].ranking and len(load_examples(specs[FEEDBACK_PREF], "dpo")) == 3
    assert load_examples(specs[FEEDBACK_SFT], "sft")[0]["messages"] == WHO + [{"role": "assistant", "content": LUMI}]
    counts = store.counts()
    assert (counts.events, counts.up, counts.down, counts.corrections) == (5, 2, 2, 1)
    assert (counts.sft_rows, counts.pref_rows) == (2, 3)
    lines = (tmp_path / "fb" / "feedback.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["answer"] == "I am SmolLM."  # every event kept, in order


def test_feedback_keeps_the_conversation_and_refuses_what_cannot_be_feedback(tmp_path: Path, catalogue: Path):
    store = FeedbackStore(tmp_path / "fb", catalogue)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Who are you?"}]
    store.record(chat, "A model.", correction=LUMI)
    assert rows_of(catalogue, FEEDBACK_SFT)[0]["messages"] == chat + [{"role": "assistant", "content": LUMI}]
    same = store.record(WHO, LUMI, rating="down", correction=f" {LUMI} ")  # corrected into itself: it was right
    assert same.sft_rows == 1 and store.events()[-1]["rating"] == "up"
    silent = store.record([{"role": "user", "content": "Hello?"}], "", rating="down", correction="Hello!")
    assert (silent.sft_rows, silent.pairs) == (1, 0)  # an empty answer is corrected, never a rejected reply
    odd = store.record([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "x", rating="up")
    assert odd.sft_rows == 0 and "not a trainable" in odd.note  # stored, but no row that would break training
    for bad in ({"messages": WHO, "answer": "x"}, {"messages": WHO, "answer": "", "rating": "down"},
                {"messages": WHO, "answer": "x", "rating": "meh"},
                {"messages": [{"role": "assistant", "content": "x"}], "answer": "x", "rating": "up"}):
        with pytest.raises(FeedbackError):
            store.record(**bad)


def test_the_completion_log_is_bounded_and_survives_a_restart(tmp_path: Path):
    log = CompletionLog(tmp_path, max_records=3)
    for i in range(7):
        log.remember(f"c{i}", "m", WHO, [f"answer {i}"])
    assert len((tmp_path / "completions.jsonl").read_text().splitlines()) == 1
    assert len((tmp_path / "completions.1.jsonl").read_text().splitlines()) == 3
    fresh = CompletionLog(tmp_path, max_records=3)  # a restarted server reads the files
    assert fresh.find("c6")["answers"] == ["answer 6"] and fresh.find("c3")["answers"] == ["answer 3"]
    assert fresh.find("c2") is None and log.find("c0") is None


# -- policy, history, promotion ---------------------------------------------------------------------
def test_policy_validates_and_round_trips(tmp_path: Path):
    with pytest.raises(ConfigError) as problems:
        LoopPolicy.from_dict({"model_name": "my model", "metric": "accuracy", "eval_dataset": ",",
                              "replay_share": 1.5})
    text = str(problems.value)
    assert all(key in text for key in ("model_name", "metric", "eval_dataset", "replay_share")), text
    policy = LoopPolicy(model_name="lumi", min_new_rows=3, tolerance=-1.0)
    policy.save(tmp_path / "policy.yaml")
    assert LoopPolicy.load(tmp_path / "policy.yaml") == policy
    with pytest.raises(LoopError, match="no loop policy"):
        load_policy(tmp_path / "missing.yaml")


def test_promotion_rule_follows_the_metric_direction_and_tolerance():
    rouge, loss = LoopPolicy(metric="predict_rouge-l"), LoopPolicy(metric="eval_loss", tolerance=0.05)
    assert decide(rouge, {"predict_rouge-l": 40.0}, {"predict_rouge-l": 40.0})[0]  # not worse: promoted
    assert not decide(rouge, {"predict_rouge-l": 39.9}, {"predict_rouge-l": 40.0})[0]
    assert decide(loss, {"eval_loss": 1.04}, {"eval_loss": 1.0})[0]  # within the tolerance
    assert not decide(loss, {"eval_loss": 1.06}, {"eval_loss": 1.0})[0]
    strict = LoopPolicy(tolerance=-5.0)  # must improve by 5 points
    assert not decide(strict, {"predict_rouge-l": 44.0}, {"predict_rouge-l": 40.0})[0]
    promoted, reason = decide(strict, {"predict_rouge-l": 46.0}, {"predict_rouge-l": 40.0})
    assert promoted and "+6" in reason
    assert not decide(rouge, {}, {"predict_rouge-l": 1.0})[0]


def test_history_names_the_served_version_and_what_was_consumed(tmp_path: Path):
    history = History(tmp_path)
    history.ensure_start(None)
    history.ensure_start("ignored: version 0 is fixed")
    adapter = tmp_path / "run1"
    adapter.mkdir()
    data = {"feedback_set": FEEDBACK_SFT, "feedback_total": 8}
    history.append("candidate", version=1, adapter=str(adapter), promoted=True, data=data)
    history.append("candidate", version=2, adapter=str(adapter), promoted=False, data=data | {"feedback_total": 12},
                   reason="worse")
    assert history.served().number == 1 and history.next_version() == 3
    assert history.consumed_rows(FEEDBACK_SFT) == 12 and history.consumed_rows(FEEDBACK_PREF) == 0
    with pytest.raises(LoopError, match="never promoted"):
        history.servable(2)
    controller = LoopController(tmp_path.parent / "nowhere")
    controller.history = history
    assert controller.rollback(0).adapter is None and history.served().number == 0
    with pytest.raises(LoopError, match="already served"):
        controller.rollback(0)


def test_the_mix_replays_the_share_asked_for(tmp_path: Path, catalogue: Path):
    store = FeedbackStore(tmp_path / "fb", catalogue)
    for i in range(6):
        store.record([{"role": "user", "content": f"Who are you, really ({i})?"}], "A model.", correction=LUMI)
    assert replay_count(6, 0.25, 100) == 2 and replay_count(6, 0.0, 100) == 0 and replay_count(6, 0.9, 5) == 5
    mix = build_mix(catalogue, "mix-v1", "sft", FEEDBACK_SFT, [(catalogue, "alpaca_en_zh_demo")], 0.25, seed=1)
    assert (mix.feedback_rows, mix.replay_rows, mix.replay_from) == (6, 2, ["alpaca_en_zh_demo"])
    examples = load_examples(load_catalogue(catalogue)["mix-v1"], "sft")
    assert len(examples) == 8 and sum(e["messages"][-1]["content"] == LUMI for e in examples) == 6
    store.record(WHO, "I am SmolLM.", correction=LUMI)
    pairs = build_mix(catalogue, "mix-v2", "dpo", FEEDBACK_PREF, [(catalogue, "identity")], 0.5, seed=2)
    assert pairs.replay_rows == 0 and "cannot be used for dpo" in pairs.note  # SFT rows never enter a DPO mix
    assert len(load_examples(load_catalogue(catalogue)["mix-v2"], "dpo")) == 7


def test_a_candidate_continues_the_served_adapter_or_starts_a_new_one(tmp_path: Path):
    from app.config import JobConfig
    from app.loop.history import Version
    from app.train.runfolder import RunFolder

    policy = LoopPolicy(method="dpo", learning_rate=1e-5, max_steps=7, lora_rank=4, dataset_dir=str(tmp_path))
    fresh = training_job(policy, Version(0, None, {}), None, "mix", tmp_path / "out")
    assert (fresh.stage, fresh.adapter_name_or_path, fresh.lora_rank, fresh.max_steps) == ("dpo", None, 4, 7)
    run = RunFolder(tmp_path / "served")
    run.create(JobConfig(template="chatml", lora_rank=16, cutoff_len=333, val_size=0.1, output_dir=str(run.path)))
    (run.adapter).mkdir()
    (run.adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x"}))
    job = training_job(policy, Version(1, str(run.path), {}), None, "mix", tmp_path / "out2")
    assert job.adapter_name_or_path == str(run.adapter.resolve()) and job.lora_rank == 16
    assert (job.template, job.cutoff_len, job.val_size, job.dataset, job.learning_rate) == (
        "chatml", 333, 0.0, "mix", 1e-5)


# -- the API ---------------------------------------------------------------------------------------
def test_feedback_over_http_names_an_earlier_answer(tmp_path: Path, catalogue: Path):
    backend = FakeBackend()
    backend.gate.set()
    server = serve(create_app(backend, api_key="k", runs_dir=tmp_path / "runs", dataset_dir=catalogue))
    url = next(server)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k")
        reply = client.chat.completions.create(model="fake", messages=WHO)
        post = lambda body, key="k": httpx.post(f"{url}/v1/feedback", json=body,  # noqa: E731
                                                headers={"Authorization": f"Bearer {key}"})
        ok = post({"completion_id": reply.id, "rating": "down", "correction": LUMI})
        assert ok.status_code == 200, ok.text
        assert ok.json()["sft_rows_added"] == 1 and ok.json()["preference_pairs_added"] == 1
        assert rows_of(catalogue, FEEDBACK_PREF)[0]["rejected"]["content"] == "Hello"  # what the server answered
        streamed = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "Hi"}],
                                                  stream=True)
        chunks = list(streamed)
        up = post({"completion_id": chunks[0].id, "rating": "up"})
        assert up.status_code == 200 and rows_of(catalogue, FEEDBACK_SFT)[-1]["messages"][-1]["content"] == "Hello"
        missing = post({"completion_id": "chatcmpl-nope", "rating": "up"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "completion_not_found"
        for bad in ({"rating": "up"}, {"completion_id": reply.id, "rating": "great"}, {"completion_id": reply.id},
                    {"completion_id": reply.id, "rating": "up", "choice_index": 3}):
            answer = post(bad)
            assert answer.status_code == 400 and answer.json()["error"]["message"], (bad, answer.text)
        assert post({"completion_id": reply.id, "rating": "up"}, key="wrong").status_code == 401
    finally:
        next(server, None)


# -- the CLI ---------------------------------------------------------------------------------------
def test_loop_cli_policy_status_and_refusals(tmp_path: Path, capsys, catalogue: Path):
    runs = str(tmp_path / "runs")
    assert cli(["loop", "policy", "--runs-dir", runs, "--model_name", "lumi", "--min_new_rows", "2",
                "--dataset_dir", str(catalogue)]) == 0
    assert cli(["loop", "policy", "--runs-dir", runs, "--tolerance", "0.5"]) == 0  # the rest is kept
    policy = LoopPolicy.load(Path(runs) / "loop" / "policy.yaml")
    assert (policy.model_name, policy.min_new_rows, policy.tolerance) == ("lumi", 2, 0.5)
    assert cli(["loop", "policy", "--runs-dir", runs, "--metric", "accuracy"]) == 2
    assert "metric" in capsys.readouterr().err
    FeedbackStore(Path(runs) / "feedback", catalogue).record(WHO, "A model.", correction=LUMI)
    assert cli(["loop", "status", "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    assert "1 new of 2 rows in feedback_sft" in out and "1 corrections" in out
    assert cli(["loop", "run-once", "--runs-dir", runs]) == 0
    assert "not due" in capsys.readouterr().out
    assert cli(["loop", "rollback", "5", "--runs-dir", runs]) == 1
    assert "no version 5" in capsys.readouterr().err
    assert cli(["loop", "policy", "--runs-dir", runs, "--eval_dataset", "nope"]) == 0
    assert cli(["loop", "run-once", "--force", "--runs-dir", runs]) == 1  # refused before any training
    assert "no dataset 'nope'" in capsys.readouterr().err
    assert not [p for p in Path(runs).iterdir() if p.name.startswith("loop-")]


def test_the_feedback_and_panel_strings_have_chinese():
    from app.config.loop import LoopPolicy
    from app.ui.feedback import STRINGS as FEEDBACK
    from app.ui.tabs.loop_strings import STRINGS as PANEL

    same = {"loop.field.pref_beta", "loop.refresh", "loop.msg.error", "fb.msg.error"}  # no words to translate
    for key, entry in (FEEDBACK | PANEL).items():
        assert entry.get("en") and entry.get("zh"), key
        if key not in same:
            assert any("\u4e00" <= ch <= "\u9fff" for ch in entry["zh"]), key
    for name in LoopPolicy.spec():  # every field the panel shows has a label and help in both languages
        if name not in ("model_name_or_path", "dataset_dir"):
            assert f"loop.field.{name}" in PANEL and f"loop.field.{name}.info" in PANEL, name
