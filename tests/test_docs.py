"""The command reference in docs/CLI.md is the commands' own --help, kept current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "CLI.md").read_text(encoding="utf-8") == module.render(), (
        "docs/CLI.md is stale: run python docs/gen_cli.py > docs/CLI.md"
    )
