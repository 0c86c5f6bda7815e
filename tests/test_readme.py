"""The README's flag tables are config.py's (regenerate with `python tools/flag_tables.py`)."""

import runpy

from conftest import ROOT


def test_readme_flag_tables_are_generated_from_the_config():
    tables = runpy.run_path(str(ROOT / "tools" / "flag_tables.py"))
    text = (ROOT / "README.md").read_text()
    assert tables["render"](text) == text, "README flag tables are stale: run python tools/flag_tables.py"
    assert text.count("<!-- flags:") == 5  # the three trainers, sample, evaluate
