"""The front page and docs/: every relative link points at a file of the repository, the front page
stays short, and the files the docs cite as evidence are in the repository."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
#: a repository path written in backquotes, e.g. `benchmarks/results/mlstm_cpu.jsonl`
CITED_RESULT = re.compile(r"`((?:benchmarks/results|docs)/[\w./+-]+\.(?:jsonl|json|png|csv))`")


def relative_links(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        yield target.split("#", 1)[0]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    links = list(relative_links(page))
    missing = [t for t in links if not (page.parent / t).exists()]
    assert not missing, f"{page.name}: links to missing files {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_cited_result_files_are_in_the_repository(page):
    """A benchmark result or figure the docs cite by its path is committed, not only on someone's disk."""
    cited = set(CITED_RESULT.findall(page.read_text()))
    missing = [c for c in cited if not (REPO / c).is_file()]
    assert not missing, f"{page.name}: cites files that are not in the repository: {missing}"


def test_front_page_is_short_and_links_every_doc():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    linked = {t for t in relative_links(REPO / "README.md")}
    for doc in (REPO / "docs").glob("*.md"):
        assert f"docs/{doc.name}" in linked, f"README.md does not link docs/{doc.name}"
    assert "make demo" in readme and "make test" in readme
