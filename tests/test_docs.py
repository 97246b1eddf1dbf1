"""The docs match the code: every setting the one declaration knows is in the README's table, and
every test the reliability doc cites exists."""

from __future__ import annotations

import re
from pathlib import Path

from campaign_pipeline.config import environment_variable_names

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_the_readmes_configuration_table():
    readme = (ROOT / "README.md").read_text()
    table_names = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", readme, flags=re.MULTILINE))
    assert set(environment_variable_names()) <= table_names


def test_every_test_the_reliability_doc_cites_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    cited = {(module, name) for module, name in re.findall(r"tests/(test_\w+)\.py::(test_\w+)", doc)
             if not name.endswith("_")}  # `test_x_*` cites a family
    assert cited, "the reliability doc cites no test"
    missing = [f"{module}::{name}" for module, name in sorted(cited)
               if not re.search(rf"^def {name}\b", (ROOT / "tests" / f"{module}.py").read_text(), flags=re.MULTILINE)]
    assert missing == []
