"""The assembled Blocks, without a browser: every field has a control, languages re-label, the run
monitor rebuilds a run from its folder and follows it incrementally."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.config import JobConfig
from app.train.runfolder import RunFolder
from app.ui.app import build_app
from app.ui.forms import SPECIAL_FIELDS

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    shutil.copy(REPO / "dataset_info.json", root / "dataset_info.json")
    shutil.copytree(REPO / "data", root / "data")
    run = RunFolder(root / "runs" / "old-run")
    run.create(JobConfig(dataset_dir=str(root), output_dir=str(run.path)))
    run.write_state(state="stopped")
    for step in range(1, 6):
        run.events.append("log", step=step, total_steps=10, loss=3.0 - step / 10, lr=1e-4, mem_mb=900)
    run.events.append("done", state="stopped", error=None)
    demo = build_app(root / "runs", root, lang="en")
    return demo.studio, run


def follower(monitor, elem_id):
    """The function that follows the monitor's tick and fills the component `elem_id`."""
    return next(fn for fn, _, outputs in monitor.followers if any(getattr(o, "elem_id", None) == elem_id
                                                                   for o in outputs))


def test_every_field_has_a_control(studio):
    ctx, _ = studio
    assert set(ctx.fields) == set(JobConfig.spec()) - set(SPECIAL_FIELDS)
    for tab in ("model", "dataset", "train", "chat", "export"):
        assert tab in ctx.shared["tabs"]


def test_language_switch_relabels_everything(studio):
    ctx, _ = studio
    zh = ctx.relabel("zh")
    assert len(zh) == len(ctx.registry)
    by_key = {entry.key: update for entry, update in zip(ctx.registry, zh)}
    assert by_key["field.learning_rate"]["label"] == "学习率"
    assert by_key["field.learning_rate"]["info"] == "峰值学习率。"
    assert by_key["tab.train"]["label"] == "训练" and by_key["train.start"]["value"] == "开始训练"
    en = {entry.key: update for entry, update in zip(ctx.registry, ctx.relabel("en"))}
    assert en["field.learning_rate"]["info"] == JobConfig.spec()["learning_rate"].metadata["help"]


def test_the_language_switch_runs_in_the_page_with_what_relabel_says(studio):
    """The switch is a page-side function (no backend event whose ~300 outputs would stay in the page's
    loading-status table): its table holds, per language, Gradio's form of every `relabel` update."""
    import json

    ctx, _ = studio
    config = ctx.demo.get_config_file()
    lang_id = ctx.shared["lang"]._id
    switch = [d for d in config["dependencies"] if [lang_id, "change"] in [list(t) for t in d["targets"]]
              and "const table" in (d["js"] or "")]
    assert len(switch) == 1 and switch[0]["backend_fn"] is False
    assert len(switch[0]["outputs"]) == len(ctx.registry)
    js = switch[0]["js"]
    table = json.loads(js[js.index("const table = ") + len("const table = "):js.index("; return")])
    for lang in ("en", "zh"):
        updates = ctx.relabel(lang)
        assert len(table[lang]) == len(updates)
        for sent, update in zip(table[lang], updates):
            assert sent["__type__"] == "update"
            for key in ("label", "value", "info"):
                if key in update:
                    assert sent[key] == update[key], (lang, key, update)
    by_key = {entry.key: sent for entry, sent in zip(ctx.registry, table["zh"])}
    assert by_key["train.start"]["value"] == "开始训练"


def test_no_backend_event_reads_the_whole_form(studio):
    """Every input of a queued event stays in the page's loading-status table, walked on every tick:
    the Train form (~80 fields) reaches its events as one packed value (app.ui.idle.Pack)."""
    ctx, _ = studio
    config = ctx.demo.get_config_file()
    field_ids = {c._id for c in ctx.fields.values()}
    heavy = [(d["id"], len(d["inputs"])) for d in config["dependencies"]
             if d["backend_fn"] and len(set(d["inputs"]) & field_ids) > 8]
    assert not heavy, heavy
    packers = [d for d in config["dependencies"] if not d["backend_fn"] and len(set(d["inputs"]) & field_ids) > 8]
    assert packers and all(len(d["outputs"]) == 1 for d in packers)


def test_monitor_rebuilds_and_follows_a_run(studio):
    ctx, run = studio
    monitor = ctx.shared["train_monitor"]
    out = dict(zip(["table", "sig", "run", "compare", "view", "loss", "lr", "status", "log", "timer"],
                   monitor.show(None)))
    assert out["run"]["value"] == "old-run" and out["table"].iloc[0]["state"] == "stopped"
    train = out["loss"][out["loss"].series == "train"]
    assert train.step.tolist() == [1, 2, 3, 4, 5] and "stopped" in out["status"]
    assert out["timer"].active is False  # nothing runs: no polling
    view, offset = out["view"], out["view"].offset
    # a resumed attempt appends to the same file: the next tick reads only the new bytes
    run.events.append("stage", name="training", message="training (resumed from checkpoint-5)")
    for step in (6, 7, 8):
        run.events.append("log", step=step, total_steps=10, loss=2.0, lr=1e-4)
    run.write_state(state="running")  # no live pid: refresh() marks it failed, as after a crash
    ctx.manager.refresh()  # what the studio's scheduler thread does every few seconds
    ticked = monitor.tick(view, "old-run", out["sig"])
    train = ticked[5][ticked[5].series == "train"]
    assert train.step.tolist()[-1] == 8 and ticked[4].offset > offset
    assert run.read_state()["state"] == "failed" and ticked[4].done["state"] == "failed"
    assert "failed" in ticked[7] and ticked[8]["visible"] is True  # the status and the worker log tail


def test_a_tick_never_undoes_a_pick(studio):
    """Two sessions: a tick that left the page before the newest pick reached the server changes nothing,
    and new runs are appended to the picker's choices (an open dropdown's options never move)."""
    from app.ui.tabs.train_runs import STALE_S, keep_order

    ctx, _ = studio
    monitor = ctx.shared["train_monitor"]
    picked = monitor.show("old-run")
    late = monitor.tick(picked[4], "other-run", picked[1])  # sent while the page still showed other-run
    assert all(out == {"__type__": "update"} for out in late)  # gr.skip(): the pick's view and status stay
    assert monitor.tick(picked[4], "old-run", picked[1])[4].run == "old-run"
    picked[4].selected_at -= STALE_S  # a mismatch that lasts is the page's: followed (other-run is gone)
    assert monitor.tick(picked[4], "other-run", picked[1])[2]["value"] == "old-run"
    assert keep_order(["b", "a"], ["c", "a", "b"]) == ["b", "a", "c"]
    assert keep_order(["b", "a"], ["a"]) == ["a"]


def test_estimates_never_download_a_hub_model(studio, monkeypatch):
    from app.models import source
    from app.models.source import ModelSourceError

    ctx, _ = studio
    monkeypatch.setattr(source, "download_from_hub", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(ModelSourceError, match="Load info"):
        ctx.model_info("someorg/some-model", fetch=False)


def test_the_train_tab_timer_has_one_handler(studio):
    """Each event the page dispatches costs Chromium a pass over every component's loading status: the run
    monitor's timer sends one request per tick, the stage curves riding in it (Monitor.follow)."""
    ctx, _ = studio
    monitor = ctx.shared["train_monitor"]
    handlers = [d for d in ctx.demo.config["dependencies"]
                if any(t[0] == monitor.timer._id and t[1] == "tick" for t in d["targets"])]
    assert len(handlers) == 1
    outputs = {ctx.demo.blocks[i].elem_id for i in handlers[0]["outputs"]}
    assert {"train-status", "train-loss", "train-metrics", "train-lengths"} <= outputs
    assert handlers[0]["queue"] is False


def test_the_stage_curves_read_the_events_file_only_when_the_view_moved(studio, monkeypatch):
    """The stage curves ride in the monitor's tick: the monitor has just read the run's new bytes, so with
    none since their last draw they skip without reading the whole events file again."""
    ctx, _ = studio
    monitor = ctx.shared["train_monitor"]
    run = RunFolder(ctx.runs_dir / "dpo-run")
    run.create(JobConfig(stage="dpo", dataset_dir=str(ctx.dataset_dir), output_dir=str(run.path)))
    run.write_state(state="stopped")
    for step in (1, 2):
        run.events.append("log", step=step, total_steps=4, loss=0.69, rewards_accuracies=0.5, rewards_margins=0.1)
    follow = follower(monitor, "train-metrics")
    view = monitor.show("dpo-run")[4]
    drawn = follow("dpo-run", view, None)
    assert drawn[0]["visible"] is True and drawn[2][1] == view.offset  # DPO numbers: a plot, signed by offset
    run.events.append("log", step=3, total_steps=4, loss=0.6, rewards_accuracies=1.0, rewards_margins=0.3)
    skip, reads, read_from = {"__type__": "update"}, [], type(run.events).read_from
    monkeypatch.setattr(type(run.events), "read_from",
                        lambda self, offset=0: reads.append(offset) or read_from(self, offset))  # counts reads
    assert follow("dpo-run", view, drawn[2]) == (skip, skip, drawn[2]) and reads == []  # the view has not moved
    run.events.append("done", state="stopped", error=None)  # the monitor reads the new bytes: the run ended
    view = monitor.tick(view, "dpo-run", None)[4]
    redrawn = follow("dpo-run", view, drawn[2])
    assert reads[-1] == 0  # the whole file, once the run ended
    assert redrawn[2][1] == view.offset > drawn[2][1] and len(redrawn[0]["value"]) > len(drawn[0]["value"])


def test_the_stage_curves_of_an_sft_run_read_nothing_after_the_first_tick(studio, monkeypatch):
    """SFT has no curves beyond the loss: once a tick has seen the stage, later ticks read neither the job
    nor the events file (each tick used to load job.yaml and the whole events file of a training run)."""
    ctx, _ = studio
    monitor = ctx.shared["train_monitor"]
    run = RunFolder(ctx.runs_dir / "sft-run")
    run.create(JobConfig(stage="sft", dataset_dir=str(ctx.dataset_dir), output_dir=str(run.path)))
    run.write_state(state="running")
    run.events.append("log", step=1, total_steps=9, loss=2.0)
    follow = follower(monitor, "train-metrics")
    view = monitor.show("sft-run")[4]
    first = follow("sft-run", view, None)
    assert first[0]["visible"] is False and first[2][4] == "sft"
    reads, read_from, job = [], type(run.events).read_from, RunFolder.job
    monkeypatch.setattr(type(run.events), "read_from",
                        lambda self, offset=0: reads.append(offset) or read_from(self, offset))
    monkeypatch.setattr(RunFolder, "job", lambda self: reads.append("job") or job(self))
    sig = first[2]
    for step in range(2, 6):
        run.events.append("log", step=step, total_steps=9, loss=2.0 / step)
        view = monitor.tick(view, "sft-run", None)[4]  # the monitor itself reads the new bytes
        reads.clear()
        assert follow("sft-run", view, sig)[2] == sig and reads == []


def test_the_stopping_line_goes_once_the_run_has_ended(studio):
    from app.ui import plots

    ctx, _ = studio
    monitor = ctx.shared["train_monitor"]
    settle = follower(monitor, "train-monitor-message")
    said = ctx.t("msg.stopping", "zh", name="old-run")
    ended = plots.LiveView(run="old-run", done={"state": "stopped"})
    assert settle("old-run", ended, said, "zh") == ("",)
    still_running = plots.LiveView(run="old-run")
    assert settle("old-run", still_running, said, "zh")[0] != ""  # not yet: left as it is
    assert settle("old-run", ended, ctx.t("msg.resumed", "zh", name="old-run"), "zh")[0] != ""  # other lines stay
    assert settle("other-run", ended, said, "zh")[0] != ""  # the page moved to another run: not this tick's to say
