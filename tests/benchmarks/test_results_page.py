"""benchmarks/results_page.py: a benchmark command replaces its own section of the results page
and leaves every other byte as it is; a section the page lacks is appended; markers stay valid."""
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))          # the benchmarks package lives beside the tests, not installed
from benchmarks.results_page import (  # noqa: E402
    PAGE,
    PageError,
    block,
    replace_section,
    sections,
    update_page,
)

PAGE_TEXT = ("# Results\n\nIntro: sections sit between `<!-- bench:NAME -->` lines.\n\n"
             + block("a", "## A\n\n| x |\n|---|\n| 1 |") + "\nhand-written text between sections\n\n"
             + block("b", "## B\n\nold figures of b") + "\n"
             + block("c", "## C\n\nfigures of c\n") + "trailing note\n")


def _slices(text: str) -> dict[str, str]:
    return {name: text[start:end] for name, (start, end) in sections(text).items()}


def test_replacing_one_section_keeps_every_other_byte():
    new = replace_section(PAGE_TEXT, "b", "## B\n\nnew figures of b")
    start, end = sections(PAGE_TEXT)["b"]
    nstart, nend = sections(new)["b"]
    assert new[:nstart] == PAGE_TEXT[:start]                     # the intro and sections before it
    assert new[nend:] == PAGE_TEXT[end:]                         # the sections and text after it
    assert "new figures of b" in new[nstart:nend] and "old figures" not in new
    old, now = _slices(PAGE_TEXT), _slices(new)
    assert now["a"] == old["a"] and now["c"] == old["c"]


def test_a_missing_section_is_appended_and_the_rest_is_kept():
    new = replace_section(PAGE_TEXT, "d", "## D\n\nfirst figures of d")
    assert new.startswith(PAGE_TEXT)
    assert list(sections(new)) == ["a", "b", "c", "d"]
    assert new.endswith(block("d", "## D\n\nfirst figures of d"))
    assert replace_section("", "d", "x") == block("d", "x")      # a new page is just the section


def test_the_page_stays_valid_after_two_updates(tmp_path):
    page = tmp_path / "RESULTS.md"
    page.write_text(PAGE_TEXT)
    update_page(page, {"b": "## B\n\nrun 1", "e": "## E\n\nrun 1"})
    once = page.read_text()
    update_page(page, {"b": "## B\n\nrun 2", "e": "## E\n\nrun 2"})
    twice = page.read_text()
    assert list(sections(twice)) == ["a", "b", "c", "e"]         # parses: balanced, no repeats
    assert "run 1" not in twice and twice.count("run 2") == 2
    assert _slices(twice)["a"] == _slices(PAGE_TEXT)["a"] and _slices(twice)["c"] == _slices(PAGE_TEXT)["c"]
    update_page(page, {"b": "## B\n\nrun 2", "e": "## E\n\nrun 2"})
    assert page.read_text() == twice != once                     # the same figures give the same page
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]   # no temporary left behind
    update_page(tmp_path / "new.md", {"f": "## F"})              # a page that does not exist yet
    assert list(sections((tmp_path / "new.md").read_text())) == ["f"]


@pytest.mark.parametrize("bad", [
    "<!-- bench:a -->\nx\n",                                     # never closed
    "x\n<!-- /bench:a -->\n",                                    # closed, never opened
    "<!-- bench:a -->\n<!-- bench:b -->\n<!-- /bench:b -->\n<!-- /bench:a -->\n",   # nested
    block("a", "x") + block("a", "y"),                           # twice
])
def test_broken_markers_are_refused_not_overwritten(bad):
    with pytest.raises(PageError):
        replace_section(bad, "a", "z")


def test_a_body_holding_a_marker_is_refused():
    with pytest.raises(PageError):
        replace_section(PAGE_TEXT, "b", "## B\n<!-- /bench:b -->\n")


def test_the_repository_page_has_a_section_for_every_benchmark_command():
    names = sections(PAGE.read_text())
    assert {"stages", "dag", "demo", "ablation", "gpu"} <= set(names)   # run.py, ablation.py, bench_gpu.py
