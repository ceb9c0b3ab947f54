"""Fast tests of the web studio's pure logic: strings, form <-> JobConfig, events -> frames, datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.config import GROUPS, ConfigError, JobConfig
from app.jobs.manager import RunSummary
from app.train.runfolder import EventLog
from app.ui import datasets as ds
from app.ui import forms, plots
from app.ui.app import AccessError, is_loopback, parse_auth, webui_main
from app.ui.i18n import LANGUAGES, STRINGS, Translator

REPO = Path(__file__).resolve().parent.parent


# -- strings ----------------------------------------------------------------------------------
def test_every_field_and_group_has_both_languages():
    t = Translator()
    for name, spec in JobConfig.spec().items():
        assert t.t(f"field.{name}.info", "en") == spec.metadata["help"]  # English help is the schema's
        zh = t.t(f"field.{name}.info", "zh")
        assert zh != spec.metadata["help"] and any("\u4e00" <= ch <= "\u9fff" for ch in zh), name
        assert t.t(f"field.{name}", "zh") != f"field.{name}"
    for group in GROUPS:
        assert t.t(f"group.{group}", "zh") != t.t(f"group.{group}", "en") or group in ("lora",)


def test_ui_strings_have_every_language():
    for key, entry in STRINGS.items():
        assert set(entry) == set(LANGUAGES), key


def test_translator_falls_back_and_formats():
    t = Translator({"x": {"en": "{n} rows"}})
    assert t.t("x", "zh", n=3) == "3 rows"  # no zh: English
    assert t.t("nope", "zh") == "nope"
    assert t.info("model.source", "zh").startswith("内置")
    assert t.info("data.prev") is None


# -- form <-> JobConfig -----------------------------------------------------------------------
def test_controls_follow_the_metadata():
    assert forms.control_kind("stage") == "dropdown"
    assert forms.control_kind("quantization_bit") == "dropdown"
    assert forms.choice_values("quantization_bit") == ["none", "4", "8"]
    assert forms.control_kind("bf16") == "dropdown"  # none (automatic), True, False
    assert forms.control_kind("learning_rate") == "number"
    assert forms.control_kind("max_samples") == "textbox"  # optional number: empty means None
    assert forms.control_kind("dataset") == "multiselect"
    assert forms.control_kind("resume_from_checkpoint") == "textbox"
    assert "model_name_or_path" not in forms.form_fields()
    assert set(forms.form_fields()) | set(forms.SPECIAL_FIELDS) == set(JobConfig.spec())


def test_default_form_is_the_default_job(tmp_path):
    job = forms.form_to_job(forms.default_controls(), None, tmp_path, tmp_path / "runs")
    expected = JobConfig(dataset_dir=str(tmp_path))
    assert job.to_dict() == expected.to_dict()


def test_form_values_convert_both_ways(tmp_path):
    values = forms.default_controls() | {
        "dataset": ["identity", "alpaca_en_zh_demo"], "quantization_bit": "4", "max_steps": 40.0,
        "lora_alpha": "32", "max_samples": "", "output_dir": "my-run", "learning_rate": 5e-4,
    }
    job = forms.form_to_job(values, "some/model", tmp_path, tmp_path / "runs")
    assert job.dataset == "identity,alpaca_en_zh_demo" and job.quantization_bit == 4 and job.max_steps == 40
    assert job.lora_alpha == 32 and job.max_samples is None and job.model_name_or_path == "some/model"
    assert job.output_dir == str(tmp_path / "runs" / "my-run")
    back = forms.job_to_controls(job)
    assert back["dataset"] == ["identity", "alpaca_en_zh_demo"] and back["quantization_bit"] == "4"
    assert back["lora_alpha"] == "32" and back["max_samples"] == ""


def test_invalid_form_lists_every_problem(tmp_path):
    values = forms.default_controls() | {"dataset": [], "cutoff_len": 2, "learning_rate": 0}
    with pytest.raises(ConfigError) as err:
        forms.form_to_job(values, None, tmp_path, tmp_path)
    text = "\n".join(err.value.problems)
    assert "cutoff_len" in text and "learning_rate" in text and "dataset" in text
    # an estimate needs no dataset yet
    ok = forms.estimate_job(forms.default_controls() | {"dataset": []}, None, tmp_path, tmp_path)
    assert ok.datasets


# -- events -> frames -------------------------------------------------------------------------
def _events(log: EventLog) -> None:
    log.append("stage", name="loading_model", message="loading model embedded")
    for step in (1, 2, 3):
        log.append("log", step=step, total_steps=10, loss=2.0 / step, lr=1e-4 * step, tokens_per_s=200.0,
                   eta_s=65.0, mem_mb=2048)
    log.append("eval", step=3, eval_loss=1.5)


def test_live_view_reads_incrementally(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    _events(log)
    view = plots.LiveView(run="r")
    events, offset = log.read_from(0)
    assert view.feed(events, offset)
    with open(log.path, "a") as handle:
        handle.write('{"t": 1, "kind": "log", "step": 4, "loss"')  # a torn line waits for its end
    events, offset = log.read_from(view.offset)
    assert not view.feed(events, offset)
    with open(log.path, "a") as handle:
        handle.write(': 0.4, "lr": 0.0004, "total_steps": 10}\n')
    log.append("log", step=4, total_steps=10, train_loss=0.9, final=True)
    log.append("done", state="finished", error=None)
    events, offset = log.read_from(view.offset)
    assert view.feed(events, offset) and view.done["state"] == "finished"
    frame = plots.loss_frame(view)
    assert frame[frame.series == "train"].step.tolist() == [1, 2, 3, 4]
    assert frame[frame.series == "eval"].loss.tolist() == [1.5]
    assert plots.lr_frame(view).lr.tolist()[-1] == pytest.approx(4e-4)
    whole = plots.LiveView(run="r")
    whole.feed(*log.read_from(0))
    assert plots.loss_frame(whole).equals(frame)  # a fresh page rebuilds the same curve


def test_resumed_steps_keep_the_newest_value(tmp_path):
    view = plots.LiveView(run="r")
    view.feed([{"kind": "log", "step": 1, "loss": 3.0, "lr": 1.0}, {"kind": "log", "step": 2, "loss": 2.0, "lr": 1.0},
               {"kind": "done", "state": "stopped"}, {"kind": "stage", "name": "training"},
               {"kind": "log", "step": 2, "loss": 1.9, "lr": 1.0}], 0)
    train = plots.loss_frame(view).query("series == 'train'")
    assert train.loss.tolist() == [3.0, 1.9] and view.done is None


def test_status_line_and_failure(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    _events(log)
    view = plots.LiveView(run="r")
    view.feed(*log.read_from(0))
    line = plots.status_line(view, {"state": "running"})
    for part in ("running", "loading model", "step 3/10", "200 tok/s", "ETA 1:05", "mem 2.00 GiB"):
        assert part in line
    view.feed([{"kind": "done", "state": "failed", "error": "ValueError: boom"}], 0)
    assert "failed" in plots.status_line(view, {"state": "running"}) and "boom" in plots.status_line(view, {})


def test_frames_keep_numeric_axes_and_every_series():
    empty = plots.LiveView()
    for frame in (plots.loss_frame(empty), plots.lr_frame(empty), plots.compare_frame({})):
        assert str(frame["step"].dtype) == "int64" and str(frame.iloc[:, 1].dtype) == "float64"
    assert plots.loss_frame(empty).series.tolist() == ["train", "eval"]  # one anchor point each
    view = plots.LiveView()
    view.feed([{"kind": "log", "step": 3, "loss": 2.0, "lr": 1.0}], 0)
    anchored = plots.loss_frame(view)
    assert anchored[anchored.series == "eval"][["step", "loss"]].values.tolist() == [[3, 2.0]]


def test_long_runs_send_a_thinned_curve_that_keeps_its_points_as_it_grows():
    """A run logging every step sends at most ~MAX_POINTS per curve: every stride-th logged value (real
    values, no averaging), the newest always, and the same points from one tick to the next."""
    from app.ui.stage_plots import metrics_frame

    def logs(n):
        return [{"kind": "log", "step": s, "loss": 10.0 / s, "lr": 1e-4, "reward": float(s)} for s in range(1, n + 1)]

    short = plots.LiveView()
    short.feed(logs(plots.MAX_POINTS), 0)
    assert plots.loss_frame(short).query("series == 'train'").step.tolist() == list(range(1, plots.MAX_POINTS + 1))
    frames = []
    for n in (1002, 1003):
        view = plots.LiveView()
        view.feed(logs(n), 0)
        train = plots.loss_frame(view).query("series == 'train'")
        assert len(train) <= plots.MAX_POINTS + 1 and train.step.iloc[-1] == n  # the newest step is on screen
        assert train.loss.tolist() == [10.0 / s for s in train.step]  # logged values, not averages
        assert len(plots.lr_frame(view)) == len(train)
        frames.append(train.step.tolist()[:-1])
    assert frames[0] == frames[1] == list(range(1, 1002, 8))  # 200 points: stride 8, the same on the next tick
    compare = plots.compare_frame({"a": logs(1002), "b": logs(3)})
    assert compare.groupby("run").size().to_dict() == {"a": len(frames[0]) + 1, "b": 3}
    reward = metrics_frame("grpo", [{"kind": "stage", "name": "training"}, *logs(1002)])
    assert reward.step.tolist()[-1] == 1002 and len(reward) == len(frames[0]) + 1


def test_compare_and_runs_frames():
    a = [{"kind": "log", "step": 1, "loss": 2.0, "lr": 1.0}]
    b = [{"kind": "log", "step": 1, "loss": 3.0, "lr": 1.0}, {"kind": "log", "step": 2, "loss": 2.5, "lr": 1.0}]
    frame = plots.compare_frame({"a": a, "b": b})
    assert frame.groupby("run").size().to_dict() == {"a": 1, "b": 2}
    assert list(plots.color_map(["a", "b", "a"])) == ["a", "b"]
    summary = RunSummary("r", "/x", "running", "sft", "lora", "identity", None, 3, 40, 1.23456, None)
    row = plots.runs_frame([summary]).iloc[0].tolist()
    assert row == ["r", "running", "sft", "lora", "identity", "3/40", "1.2346", ""]
    assert plots.format_duration(3725) == "1:02:05"


# -- datasets ---------------------------------------------------------------------------------
@pytest.fixture()
def catalogue(tmp_path) -> Path:
    shutil.copy(REPO / "dataset_info.json", tmp_path / "dataset_info.json")
    shutil.copytree(REPO / "data", tmp_path / "data")
    return tmp_path


def test_catalogue_table_and_stages(catalogue):
    frame = ds.catalogue_frame(catalogue)
    rows = frame.set_index("name")
    assert rows.loc["identity", "stage"] == "sft" and int(rows.loc["identity", "rows"]) > 0
    assert rows.loc["preference_demo", "stage"] == "dpo" and (rows["check"] == "ok").all()
    assert "preference_demo" in ds.datasets_for_stage(catalogue, "dpo")
    assert "identity" not in ds.datasets_for_stage(catalogue, "dpo")
    assert ds.datasets_for_stage(catalogue, "pt") == ["raw_text_demo"]


def test_preview_pages(catalogue):
    frame, page, pages = ds.preview_page(catalogue, "identity", 0)
    assert len(frame) == ds.PAGE_SIZE and page == 0 and pages > 1 and frame["#"].iloc[0] == 1
    last, page, _ = ds.preview_page(catalogue, "identity", 999)
    assert page == pages - 1 and 0 < len(last) <= ds.PAGE_SIZE
    assert ds.preview_page(catalogue, "nope", 0)[2] == 0


def test_upload_mapping_and_validation(tmp_path):
    good = tmp_path / "qa.jsonl"
    good.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) for i in range(3)) + "\n")
    cols = ds.file_columns(good)
    mapping = ds.guess_mapping("alpaca", False, cols)
    assert mapping == {"prompt": "question", "response": "answer"}
    assert ds.validate_upload(good, "alpaca", False, mapping) == (3, "sft", [])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "hi", "output": "yo"}) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    mapping = ds.guess_mapping("alpaca", False, ds.file_columns(bad))
    rows, _, problems = ds.validate_upload(bad, "alpaca", False, mapping)
    text = "\n".join(map(str, problems))
    assert rows == 0 and "bad.jsonl, row 2" in text and "'output'" in text and str(tmp_path) not in text
    assert ds.roles_for("sharegpt", True) == ["messages", "system", "chosen", "rejected"]
    assert ds.entry_columns("sharegpt", False, {"messages": "conversations", "prompt": "x"}) == {
        "messages": "conversations"}


def test_upload_a_kto_set_with_its_kto_tag_column(tmp_path):
    from app.data.catalogue import register_dataset

    conversations = REPO / "data" / "kto_demo.json"  # LF's KTO layout: messages + a true/false "label"
    mapping = ds.guess_mapping("openai", False, ds.file_columns(conversations))
    assert mapping == {"messages": "messages", "kto_tag": "label"}
    rows, stage, problems = ds.validate_upload(conversations, "openai", False, mapping)
    assert (stage, problems) == ("kto", []) and rows > 0
    spec = register_dataset(tmp_path, "my_kto", conversations, formatting="openai",
                            columns=ds.entry_columns("openai", False, mapping))
    assert spec.stage == "kto" and ds.datasets_for_stage(tmp_path, "kto") == ["my_kto"]
    assert ds.datasets_for_stage(tmp_path, "sft") == []
    flat = tmp_path / "flat.jsonl"  # alpaca columns with a good/bad tag
    flat.write_text("\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}", "kto_tag": i % 2 == 0})
                              for i in range(4)) + "\n")
    mapping = ds.guess_mapping("alpaca", False, ds.file_columns(flat))
    assert mapping == {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"}
    assert ds.validate_upload(flat, "alpaca", False, mapping) == (4, "kto", [])
    assert "kto_tag" not in ds.roles_for("alpaca", True)  # preference pairs carry no tag


# -- launching --------------------------------------------------------------------------------
def test_binding_beyond_loopback_needs_auth(capsys):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    assert parse_auth("127.0.0.1", None) is None
    assert parse_auth("0.0.0.0", "me:secret") == ("me", "secret")
    for host, auth in (("0.0.0.0", None), ("127.0.0.1", "nopass"), ("0.0.0.0", ":x")):
        with pytest.raises(AccessError):
            parse_auth(host, auth)
    assert webui_main(host="0.0.0.0", port=1, auth=None) == 2
    assert "--auth" in capsys.readouterr().err


def test_reward_model_runs_are_not_offered_as_chat_models(tmp_path):
    from app.train.runfolder import RunFolder
    from app.ui.context import StudioContext
    from app.ui.tabs.chat import finished_runs, reward_model_runs

    for name, stage, state in (("chatty", "sft", "finished"), ("scorer", "rm", "finished"),
                               ("prefs", "dpo", "finished"), ("half", "sft", "running")):
        run = RunFolder(tmp_path / "runs" / name)
        run.create(JobConfig(stage=stage, output_dir=str(run.path)))
        run.write_state(state=state)
        (run.path / "adapter").mkdir()
    ctx = StudioContext(tmp_path / "runs", tmp_path)
    assert sorted(finished_runs(ctx)) == ["chatty", "prefs"]  # Chat, Evaluate, Export and Loop pickers
    assert reward_model_runs(ctx) == ["scorer"]  # what GRPO's reward_model can name
