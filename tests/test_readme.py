"""The README stays true: its configuration reference is the schema's, its commands exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_config_reference_matches_the_schema():
    done = subprocess.run([sys.executable, "scripts/config_reference.py", "--check"], cwd=REPO)
    assert done.returncode == 0, "README.md is stale: run `python scripts/config_reference.py`"


def test_readme_opens_with_the_two_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = text.split("```")[1]
    assert "make studio" in first_block and "make test" in first_block


def test_every_cli_command_in_the_readme_exists():
    from app.cli import build_parser

    text = (REPO / "README.md").read_text(encoding="utf-8")
    parser = build_parser()
    commands = {line.split()[1] for line in text.splitlines() if line.startswith("ftstudio ")}
    assert {"webui", "train", "chat", "export", "api", "data"} <= commands
    for command in commands:
        with_help = [command, "check", "--help"] if command == "data" else [command, "--help"]
        try:
            parser.parse_args(with_help)
        except SystemExit as exc:  # --help exits 0; an unknown command exits 2
            assert exc.code == 0, command
