"""The Dataset tab's Insight and Generate panels without a browser: both are built into the studio, the
form becomes the right GenerateConfig, a generation run folder reads back as a status line and rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.config import ConfigError, GenerateConfig
from app.data.insight import Insight
from app.train.runfolder import RunFolder
from app.ui.app import build_app
from app.ui.dataset_generate import build_config, newest_generation, status_view
from app.ui.dataset_insight import histogram_frame, summary_markdown

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    shutil.copy(REPO / "dataset_info.json", root / "dataset_info.json")
    shutil.copytree(REPO / "data", root / "data")
    return build_app(root / "runs", root, lang="en").studio


def test_panels_are_built_and_translated(ctx):
    keys = {entry.key for entry in ctx.registry}
    assert {"insight.title", "insight.compute", "insight.apply", "gen.title", "gen.start", "gen.stop"} <= keys
    zh = {entry.key: update for entry, update in zip(ctx.registry, ctx.relabel("zh"))}
    assert zh["gen.start"]["value"] == "开始生成" and zh["insight.title"]["label"] == "数据洞察"


def test_form_to_config(ctx):
    form = {"recipe": "self_instruct", "generator": "base", "api_base": "http://x/v1", "api_model": "m",
            "api_key_env": "OPENAI_API_KEY", "topics": "a; b", "include_passage": False, "num_rows": 3,
            "temperature": 0.7, "max_new_tokens": 32, "keep_truncated": True, "system": "", "dataset_name": "mine",
            "overwrite": False, "documents": "", "source": "embedded", "path": ""}
    config = build_config(ctx, dict(form))
    assert config.api_base is None and config.model_name_or_path is None and config.system is None
    assert config.dataset_dir == str(ctx.dataset_dir) and config.topic_list == ["a", "b"] and config.keep_truncated
    run = build_config(ctx, form | {"generator": "run:lumi", "source": "folder", "path": "/models/x"})
    assert run.adapter_name_or_path == str(ctx.runs_dir / "lumi") and run.model_name_or_path == "/models/x"
    endpoint = build_config(ctx, form | {"generator": "endpoint"})
    assert endpoint.api_base == "http://x/v1" and endpoint.api_model == "m"
    with pytest.raises(ConfigError, match="topics"):
        build_config(ctx, form | {"topics": ""})


def test_status_of_a_generation_run(ctx):
    config = GenerateConfig.from_dict({"topics": "x", "num_rows": 4, "dataset_name": "shown",
                                       "output_dir": str(ctx.runs_dir / "generate-test")})
    run = RunFolder(Path(config.output_dir))
    run.create(config)
    run.write_state(state="running", pid=None)
    run.events.append("progress", step=2, total_steps=4, attempts=3, dropped={"near duplicate": 1}, last=None)
    (run.path / "shown.json").write_text(json.dumps([{"instruction": "q1", "output": "a1"},
                                                     {"instruction": "q2", "output": "a2"}]), encoding="utf-8")
    assert newest_generation(ctx) == "generate-test"
    line, rows, active = status_view(ctx, "en", "generate-test")
    assert "2 / 4 rows" in line and "3 attempts" in line and "1 near duplicate" in line and active
    assert rows["instruction"].tolist() == ["q1", "q2"]
    run.write_state(state="stopped")
    assert status_view(ctx, "zh", "generate-test")[2] is False


def test_insight_rendering(ctx):
    insight = Insight(dataset="d", stage="sft", model="m", fingerprint="f", rows=3, valid_rows=3,
                      prompt_tokens=[5, 10, 40], response_tokens=[3, 3, 30], languages={"en": 2, "zh": 1},
                      empty_fields={"input": 2})
    frame = histogram_frame(insight, "prompt")
    assert frame["rows"].sum() == 3 and frame["tokens"].iloc[0].startswith("0–")
    text = summary_markdown(ctx, "en", insight, 32, cached=False)
    assert "| Cut at cutoff_len = 32 | 1 rows |" in text and "**80** (keeps 99% of rows whole)" in text
    assert "`input` 2" in text and "en 2, zh 1" in text
