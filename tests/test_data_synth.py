"""Synthetic data without a model: de-duplication on fixed strings, the passage cutter (txt, md, pdf),
the question cleaner, the config, and the generation loop's gates driven by a scripted generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.config import ConfigError, GenerateConfig
from app.config.generate import RECIPES
from app.data.catalogue import load_catalogue
from app.data.documents import cut_passages, load_passages
from app.data.errors import DataError
from app.data.formats import load_examples
from app.data.synth import Deduplicator, Reply, Synthesizer, clean_question, dedupe, register_rows, row_problems
from app.train.runfolder import RunFolder


def test_dedupe_fixed_strings():
    questions = [
        "What is the capital of France?",
        "what is the capital   of France?",  # exact after folding case and spaces
        "Which is the capital of France?",  # 91.8% similar: near duplicate
        "How do I boil an egg?",
        "Tell me the capital of France.",  # 80%: kept
        "How do I boil an egg ?",  # 97.7%: near duplicate
    ]
    assert dedupe(questions, 0.9) == [0, 3, 4]
    assert dedupe(questions, 0.99) == [0, 2, 3, 4, 5]  # only the exact one goes
    seen = Deduplicator(0.9)
    seen.add(questions[0])
    assert seen.check(questions[1]) == "exact" and seen.check(questions[2]) == "near"
    assert seen.check(questions[3]) is None


def test_clean_question():
    assert clean_question('Question: "How do volcanoes form?"\nThey form when...') == "How do volcanoes form?"
    assert clean_question("\n1. What is bread made of?") == "What is bread made of?"
    assert clean_question("问题：月球有多大？") == "月球有多大？"
    assert clean_question("   ") == ""


def test_passage_cutter_keeps_sentences_whole():
    sentence = "Volcanoes form where magma reaches the surface of the Earth. "
    text = ("Volcanoes\n\n" + sentence * 12 + "\n\n" + "Lava cools into new rock over many years. " * 10
            + "\n\n" + "火山是岩浆到达地表的地方。" * 30)
    passages = cut_passages(text, max_chars=300)
    assert len(passages) >= 5 and all(len(p) <= 300 for p in passages)
    assert all(p.rstrip().endswith((".", "。")) for p in passages[1:])  # cut at sentence ends, never mid-way
    assert "".join(passages).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
    assert any("火山" in p for p in passages)


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose page draws `text` in Helvetica (offsets of the xref table computed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


def test_load_passages_from_txt_md_and_pdf(tmp_path):
    pytest.importorskip("pypdf")
    (tmp_path / "notes.txt").write_text("Haldra is an island in the north sea with many cliffs.\n\n" * 3,
                                        encoding="utf-8")
    (tmp_path / "guide.md").write_text("# Haldra\n\nThe island has one harbour and two lighthouses on it.\n\n"
                                       "## Weather\n\nStorms come from the west in winter, bringing rain.\n",
                                       encoding="utf-8")
    (tmp_path / "leaflet.pdf").write_bytes(minimal_pdf("The ferry to Haldra leaves every morning at nine."))
    passages = load_passages([str(tmp_path)], max_chars=400)
    by_file = {p.source.rsplit("/", 1)[-1]: p.text for p in passages}
    assert set(by_file) == {"notes.txt", "guide.md", "leaflet.pdf"}
    assert "ferry to Haldra" in by_file["leaflet.pdf"] and "lighthouses" in by_file["guide.md"]
    (tmp_path / "bad.docx").write_text("x")
    with pytest.raises(DataError, match="bad.docx.*unsupported document type"):
        load_passages([str(tmp_path / "bad.docx"), str(tmp_path / "missing.txt")])
    with pytest.raises(DataError, match="missing.txt.*file not found"):
        load_passages([str(tmp_path / "missing.txt")])


def test_config_rules():
    assert set(RECIPES) == {"self_instruct", "passage_qa", "bilingual"}
    with pytest.raises(ConfigError, match="topics: self_instruct needs"):
        GenerateConfig.from_dict({"recipe": "self_instruct"})
    with pytest.raises(ConfigError, match="documents: passage_qa needs"):
        GenerateConfig.from_dict({"recipe": "passage_qa", "topics": "x"})
    with pytest.raises(ConfigError, match="api_model"):
        GenerateConfig.from_dict({"topics": "x", "api_base": "http://127.0.0.1:1/v1"})
    config = GenerateConfig.from_dict({"topics": "volcanoes; the moon\nbread", "num_rows": "5"})
    assert config.topic_list == ["volcanoes", "the moon", "bread"] and config.num_rows == 5
    assert config.command_line().startswith("ftstudio data generate --topics")


CHINESE = {"When does the ferry leave?": "渡轮什么时候出发？",
           "From the passage: When does the ferry leave?": "渡轮每天早上九点出发。"}


class Scripted:
    """A generator that answers from a script by what it is asked (question, answer or translation)."""

    def __init__(self, questions: list[str]):
        self.questions = list(questions)
        self.calls: list[str] = []

    def __call__(self, messages, temperature, max_new_tokens) -> Reply:
        prompt = messages[-1]["content"]
        self.calls.append(prompt)
        if prompt.startswith("Translate"):
            return Reply(CHINESE[prompt.split("\n\n", 1)[1]], False)
        if "Reply with the question only" in prompt:
            return Reply(self.questions.pop(0), False)
        if prompt.startswith("Answer the question using only the passage"):
            return Reply("From the passage: " + prompt.rsplit("Question: ", 1)[1], False)
        if "long" in prompt:
            return Reply("An answer that never ends", True)
        return Reply("Answer: A short answer to " + prompt, False)


def test_gates_drop_duplicates_truncated_and_empty(tmp_path):
    script = Scripted(["What is a volcano?", "what is a  volcano?", "What is a volcano ?", "Tell me something long",
                       "", "How hot is lava?", "Why does the moon glow?", "What is yeast?"])
    config = GenerateConfig.from_dict({"topics": "volcanoes; the moon; bread", "num_rows": 3,
                                       "system": "Be brief.", "dataset_name": "gates"})
    rows_file = tmp_path / "gates.json"
    progress = []
    rows = Synthesizer(config, script, rows_file=rows_file).run(on_progress=lambda p: progress.append(p.event()))
    assert [r["instruction"] for r in rows] == ["What is a volcano?", "How hot is lava?", "Why does the moon glow?"]
    assert rows[0] == {"instruction": "What is a volcano?", "input": "", "system": "Be brief.",
                       "output": "A short answer to What is a volcano?"}
    assert progress[-1]["dropped"] == {"exact duplicate": 1, "near duplicate": 1, "answer cut at max_new_tokens": 1,
                                       "no question": 1}
    assert progress[-1]["step"] == 3 and progress[-1]["attempts"] == 7
    assert json.loads(rows_file.read_text(encoding="utf-8")) == rows  # written as it goes
    assert all(not row_problems(r) for r in rows) and row_problems({"instruction": "x", "output": " "})


def test_bilingual_passages_register_in_the_catalogue(tmp_path):
    (tmp_path / "dataset_info.json").write_text("{}", encoding="utf-8")
    doc = tmp_path / "haldra.txt"
    doc.write_text("Haldra is an island with two lighthouses. The ferry leaves at nine every morning.",
                   encoding="utf-8")
    config = GenerateConfig.from_dict({"recipe": "bilingual", "documents": str(doc), "num_rows": 2,
                                       "include_passage": True, "dataset_name": "haldra_qa",
                                       "dataset_dir": str(tmp_path)})
    rows = Synthesizer(config, Scripted(["When does the ferry leave?"]), load_passages(config.document_list),
                       rows_file=tmp_path / "haldra_qa.json").run()
    assert [r["instruction"] for r in rows] == ["When does the ferry leave?", "渡轮什么时候出发？"]
    assert rows[1]["output"] == "渡轮每天早上九点出发。"
    assert all(r["input"].startswith("Haldra is an island") and "system" not in r for r in rows)
    spec = register_rows(tmp_path / "haldra_qa.json", config)
    assert spec.file_name == "data/haldra_qa.json"
    loaded = load_examples(load_catalogue(tmp_path)["haldra_qa"], "sft")
    assert len(loaded) == 2 and loaded[1]["messages"][-1]["content"] == "渡轮每天早上九点出发。"
    with pytest.raises(DataError, match="already exists"):
        register_rows(tmp_path / "haldra_qa.json", config)


def test_a_generate_run_folder_has_its_kind(tmp_path):
    config = GenerateConfig.from_dict({"topics": "x"}).with_run_folder(tmp_path)
    run = RunFolder(Path(config.output_dir))
    run.create(config)
    assert run.kind == "data generate" and run.job_file.name == "generate.yaml"
    assert isinstance(run.job(), GenerateConfig) and run.job().datasets == ["synthetic"]
    assert "ftstudio data generate" in run.command_file.read_text()
