"""The docs match the code: every setting the one declaration knows is in the README's table with its
default, every test the reliability doc cites exists, and the links of the README and docs/ resolve inside
the repository (the README links nothing outside it)."""

from __future__ import annotations

import re
from pathlib import Path

from campaign_pipeline.config import environment_variable_names

ROOT = Path(__file__).resolve().parents[3]


def test_every_setting_is_in_the_readmes_configuration_table():
    readme = (ROOT / "README.md").read_text()
    table_names = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", readme, flags=re.MULTILINE))
    assert set(environment_variable_names()) <= table_names


def test_every_test_the_reliability_doc_cites_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    cited = {(module, name) for module, name in re.findall(r"(tests/(?:\w+/)*test_\w+)\.py::(test_\w+)", doc)
             if not name.endswith("_")}  # `test_x_*` cites a family
    assert cited, "the reliability doc cites no test"
    missing = [f"{module}::{name}" for module, name in sorted(cited)
               if not re.search(rf"^def {name}\b", (ROOT / f"{module}.py").read_text(), flags=re.MULTILINE)]
    assert missing == []


def test_the_readmes_configuration_table_states_each_settings_default():
    from campaign_pipeline.config import SETTINGS

    readme = (ROOT / "README.md").read_text()
    rows = {name: default for name, default in
            re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \| (.*?) \|", readme, flags=re.MULTILINE)}

    def plain(text: str) -> str:  # backticks, parentheses and spacing are the table's formatting
        return " ".join(re.sub(r"[`()]", " ", text).split())

    wrong = {s.name: (rows[s.name], s.default_text) for s in SETTINGS
             if s.name in rows and plain(rows[s.name]) != plain(s.default_text)}
    assert wrong == {}


# --------------------------------------------------------------------------------------- links

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _without_fences(text: str) -> str:
    return re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.MULTILINE | re.DOTALL)


def _prose(text: str) -> str:
    """``text`` without fenced blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def _links(path: Path) -> list[str]:
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _prose(path.read_text()))


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``path`` (lower case, punctuation dropped, spaces to
    hyphens, ``-1``, ``-2`` for repeats), and explicit ``id``/``name`` anchors."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", _without_fences(path.read_text()), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    anchors |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text()))
    return anchors


def test_the_readme_links_nothing_outside_the_repository():
    outside = [link for link in _links(ROOT / "README.md")
               if _SCHEME.match(link) or link.startswith("/")
               or not (ROOT / link.partition("#")[0]).resolve().is_relative_to(ROOT)]
    assert outside == []


def test_every_relative_link_of_the_readme_and_the_docs_resolves():
    broken = []
    for doc in DOCS:
        for link in _links(doc):
            if _SCHEME.match(link):
                continue  # the docs may cite outside pages; the README may not (above)
            target, _, anchor = link.partition("#")
            path = (doc.parent / target).resolve() if target else doc
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {link} (no such file in the repository)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{doc.relative_to(ROOT)}: {link} (no such heading)")
    assert broken == []
