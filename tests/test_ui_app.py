"""The assembled Blocks, without a browser: every field has a control, languages re-label, the run
monitor rebuilds a run from its folder and follows it incrementally."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
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
                if update.get(key) is not None:  # Gradio leaves out an update's None (no help line: none sent)
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


OUTPUTS = ["table", "run", "compare", "loss", "lr", "status", "log", "timer"]


def test_monitor_rebuilds_and_follows_a_run(studio):
    ctx, run = studio
    monitor = ctx.shared["train_monitor"]
    out = dict(zip(OUTPUTS, monitor.show("page-1", None)))
    assert out["run"]["value"] == "old-run" and out["table"].iloc[0]["state"] == "stopped"
    train = out["loss"][out["loss"].series == "train"]
    assert train.step.tolist() == [1, 2, 3, 4, 5] and "stopped" in out["status"]
    assert out["timer"].active is False  # nothing runs: no polling
    view = monitor.sessions.get("page-1").view
    offset = view.offset
    # a resumed attempt appends to the same file: the next tick reads only the new bytes
    run.events.append("stage", name="training", message="training (resumed from checkpoint-5)")
    for step in (6, 7, 8):
        run.events.append("log", step=step, total_steps=10, loss=2.0, lr=1e-4)
    run.write_state(state="running")  # no live pid: refresh() marks it failed, as after a crash
    ctx.manager.refresh()  # what the studio's scheduler thread does every few seconds
    ticked = dict(zip(OUTPUTS, monitor.tick("page-1", "old-run")))
    train = ticked["loss"][ticked["loss"].series == "train"]
    view = monitor.sessions.get("page-1").view
    assert train.step.tolist()[-1] == 8 and view.offset > offset
    assert run.read_state()["state"] == "failed" and view.done["state"] == "failed"
    assert "failed" in ticked["status"] and ticked["log"]["visible"] is True  # the status and the log tail
    assert monitor.sessions.get("page-2").view is None  # another page: a session of its own


def test_a_tick_never_undoes_a_pick(studio):
    """Two sessions: a tick that left the page before the newest pick reached the server changes nothing,
    and new runs are appended to the picker's choices (an open dropdown's options never move)."""
    from app.ui.tabs.train_runs import STALE_S, keep_order

    ctx, _ = studio
    monitor = ctx.shared["train_monitor"]
    monitor.show("page", "old-run")
    late = monitor.tick("page", "other-run")  # sent while the page still showed other-run
    assert all(out == {"__type__": "update"} for out in late)  # gr.skip(): the pick's view and status stay
    monitor.tick("page", "old-run")
    assert monitor.sessions.get("page").view.run == "old-run"
    monitor.sessions.get("page").view.selected_at -= STALE_S  # a mismatch that lasts is the page's: followed
    assert monitor.tick("page", "other-run")[1]["value"] == "old-run"  # (other-run is gone)
    assert keep_order(["b", "a"], ["c", "a", "b"]) == ["b", "a", "c"]
    assert keep_order(["b", "a"], ["a"]) == ["a"]


def test_a_tick_during_a_pick_changes_nothing(studio, monkeypatch):
    """A `show` that replaces the session's view while a tick reads the events: the tick's outputs are the
    older ones, so it sends none and leaves the new view in place."""
    ctx, run = studio
    monitor = ctx.shared["train_monitor"]
    monitor.show("page", "old-run")
    run.events.append("log", step=6, total_steps=10, loss=2.0, lr=1e-4)
    read_from = type(run.events).read_from

    def read_and_pick(self, offset=0):
        result = read_from(self, offset)
        monitor.sessions.get("page").view = picked  # a pick landing meanwhile
        return result

    from app.ui import plots
    picked = plots.LiveView(run="old-run")
    monkeypatch.setattr(type(run.events), "read_from", read_and_pick)
    assert all(out == {"__type__": "update"} for out in monitor.tick("page", "old-run"))
    assert monitor.sessions.get("page").view is picked


def test_estimates_never_download_a_hub_model(studio, monkeypatch):
    from app.models import source
    from app.models.source import ModelSourceError

    ctx, _ = studio
    monkeypatch.setattr(source, "download_from_hub", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(ModelSourceError, match="Load info"):
        ctx.model_info("someorg/some-model", fetch=False)


def test_the_train_tab_timer_has_one_handler_and_it_runs_in_the_page(studio):
    """Each backend event costs the page two passes over every component's loading status (app.ui.idle):
    the run monitor's timer is one frontend-only handler that posts to the studio's poll route, the stage
    curves and Stop's line riding in it (Monitor.follow)."""
    ctx, _ = studio
    monitor = ctx.shared["train_monitor"]
    handlers = [d for d in ctx.demo.config["dependencies"]
                if any(t[0] == monitor.timer._id and t[1] == "tick" for t in d["targets"])]
    assert len(handlers) == 1
    outputs = {ctx.demo.blocks[i].elem_id for i in handlers[0]["outputs"]}
    assert {"train-status", "train-loss", "train-metrics", "train-lengths", "train-monitor-message"} <= outputs
    assert handlers[0]["backend_fn"] is False and "ftstudio/poll/" in handlers[0]["js"]
    inputs = [ctx.demo.blocks[i] for i in handlers[0]["inputs"]]
    assert not any(isinstance(c, gr.State) for c in inputs)  # a frontend-only event cannot read a State


def test_the_timers_that_run_while_someone_watches_tick_in_the_page(studio):
    """The hardware table (the Model tab, open when the page loads), the API server's status and the loop's
    status refresh through app.ui.poll like the run monitor, and the tab switches that start and stop the
    hardware timer run in the page too: none of them is a backend event."""
    ctx, _ = studio
    config = ctx.demo.config
    by_output = {}
    for d in config["dependencies"]:
        if any(isinstance(ctx.demo.blocks.get(t[0]), gr.Timer) for t in d["targets"]):
            for i in d["outputs"]:
                by_output.setdefault(ctx.demo.blocks[i].elem_id, []).append(d)
    for elem_id in ("model-hardware", "api-status", "loop-status", "train-status"):
        ticks = [d for d in by_output[elem_id] if any(t[1] == "tick" for t in d["targets"])]
        assert len(ticks) == 1 and ticks[0]["backend_fn"] is False and "ftstudio/poll/" in ticks[0]["js"], elem_id
    hardware_timer = next(t[0] for d in by_output["model-hardware"] for t in d["targets"] if t[1] == "tick")
    switches = [d for d in config["dependencies"] if d["outputs"] == [hardware_timer]
                and any(t[1] == "select" for t in d["targets"])]
    assert len(switches) == len(ctx.shared["tabs"]) and not any(d["backend_fn"] for d in switches)


def test_the_poll_route_answers_the_tick_as_gradio_would_and_asks_for_the_password(studio):
    """The page's tick over HTTP, through the middleware the studio launches with: the monitor's outputs as
    Gradio's update dicts (gr.skip() an empty one), kept in the page's Gradio session as a backend event's
    are (a pick among choices only the page knew was refused), and 401 without Gradio's login when there
    is a password."""
    import re

    from fastapi.testclient import TestClient
    from gradio.routes import App

    from app.ui.idle import app_kwargs

    ctx, _ = studio
    monitor = ctx.shared["train_monitor"]
    handler = next(d for d in ctx.demo.config["dependencies"]
                   if any(t[0] == monitor.timer._id and t[1] == "tick" for t in d["targets"]))
    name = re.search(r"ftstudio/poll/(\w+)", handler["js"]).group(1)
    values = [None] * len(handler["inputs"])
    values[:3] = ["route-page", "old-run", "en"]  # key (a new page), run, language; the followers' inputs follow
    app = App.create_app(ctx.demo, app_kwargs=app_kwargs())
    client = TestClient(app)
    session = app.state_holder["gradio-session"]  # the page's Gradio session, as its first event makes it
    with pytest.raises(gr.Error, match="not in the list of choices"):
        session[monitor.run._id].preprocess("old-run")  # what a pick checks: the page built with no runs
    body = {"session": "gradio-session", "values": values}
    first = client.post(f"/ftstudio/poll/{name}", json=body)
    assert first.status_code == 200, first.text
    sent = dict(zip(OUTPUTS, first.json()))
    assert all(update["__type__"] == "update" for update in first.json())
    assert "**old-run**" in sent["status"]["value"] and sent["table"]["value"]["data"][0][0] == "old-run"
    assert [row[0] for row in sent["loss"]["value"]["data"]][:5] == [1, 2, 3, 4, 5]  # the curve, from offset 0
    assert sent["run"]["choices"] == [["old-run", "old-run"]]
    assert session[monitor.run._id].preprocess("old-run") == "old-run"  # the session took the new choices
    again = dict(zip(OUTPUTS, client.post(f"/ftstudio/poll/{name}", json=body).json()))
    assert again["status"] == again["loss"] == {"__type__": "update"}  # nothing new: skipped
    assert client.post("/ftstudio/poll/nope", json=body).status_code == 404
    assert client.post(f"/ftstudio/poll/{name}", json={"values": "not a list"}).status_code == 500

    ctx.demo.auth = [("ana", "secret")]
    locked = TestClient(App.create_app(ctx.demo, app_kwargs=app_kwargs()))
    assert locked.post(f"/ftstudio/poll/{name}", json=body).status_code == 401
    assert locked.post("/login", data={"username": "ana", "password": "secret"}).status_code == 200
    assert locked.post(f"/ftstudio/poll/{name}", json=body).status_code == 200


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
    monitor.show("page", "dpo-run")
    session = monitor.sessions.get("page")
    drawn = follow("dpo-run", session)
    sig = session.memo["stage"]
    assert drawn[0]["visible"] is True and sig.offset == session.view.offset  # DPO numbers: a plot, signed by offset
    run.events.append("log", step=3, total_steps=4, loss=0.6, rewards_accuracies=1.0, rewards_margins=0.3)
    skip, reads, read_from = {"__type__": "update"}, [], type(run.events).read_from
    monkeypatch.setattr(type(run.events), "read_from",
                        lambda self, offset=0: reads.append(offset) or read_from(self, offset))  # counts reads
    assert follow("dpo-run", session) == (skip, skip) and reads == []  # the view has not moved
    assert session.memo["stage"] == sig
    run.events.append("done", state="stopped", error=None)  # the monitor reads the new bytes: the run ended
    monitor.tick("page", "dpo-run")
    redrawn = follow("dpo-run", session)
    assert reads[-1] == 0  # the whole file, once the run ended
    assert session.memo["stage"].offset == session.view.offset > sig.offset
    assert len(redrawn[0]["value"]) > len(drawn[0]["value"])


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
    monitor.show("page", "sft-run")
    session = monitor.sessions.get("page")
    first = follow("sft-run", session)
    assert first[0]["visible"] is False and session.memo["stage"].stage == "sft"
    reads, read_from, job = [], type(run.events).read_from, RunFolder.job
    monkeypatch.setattr(type(run.events), "read_from",
                        lambda self, offset=0: reads.append(offset) or read_from(self, offset))
    monkeypatch.setattr(RunFolder, "job", lambda self: reads.append("job") or job(self))
    sig = session.memo["stage"]
    for step in range(2, 6):
        run.events.append("log", step=step, total_steps=9, loss=2.0 / step)
        monitor.tick("page", "sft-run")  # the monitor itself reads the new bytes
        reads.clear()
        follow("sft-run", session)
        assert session.memo["stage"] == sig and reads == []


def test_the_stopping_line_goes_once_the_run_has_ended(studio):
    from app.ui import plots
    from app.ui.tabs.train_runs import Session

    ctx, _ = studio
    monitor = ctx.shared["train_monitor"]
    settle = follower(monitor, "train-monitor-message")
    said = ctx.t("msg.stopping", "zh", name="old-run")
    ended = Session(plots.LiveView(run="old-run", done={"state": "stopped"}))
    assert settle("old-run", ended, said, "zh") == ("",)
    still_running = Session(plots.LiveView(run="old-run"))
    assert settle("old-run", still_running, said, "zh")[0] != ""  # not yet: left as it is
    assert settle("old-run", ended, ctx.t("msg.resumed", "zh", name="old-run"), "zh")[0] != ""  # other lines stay
    assert settle("other-run", ended, said, "zh")[0] != ""  # the page moved to another run: not this tick's to say
