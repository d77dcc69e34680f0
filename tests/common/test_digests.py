"""affect_pipeline.common.digests: the import closure a stage's code digest covers."""
import json

import pytest

from affect_pipeline.__main__ import STAGES
from affect_pipeline.common.digests import ImportGraph, code_digest, parse_imports


def _package(tmp_path, files: dict[str, str]):
    """A throwaway `affect_pipeline` tree (only its sources are read, nothing is imported)."""
    root = tmp_path / "affect_pipeline"
    for rel, src in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(src)
    return root


def test_every_import_form_is_followed(tmp_path):
    root = _package(tmp_path, {
        "a/__init__.py": "",
        "a/stage.py": "import os\nfrom affect_pipeline.a import helper\nfrom .rel import X\n"
                      "def lazy():\n    import affect_pipeline.b.deep as d\n",
        "a/helper.py": "from affect_pipeline.b import deep\n",
        "a/rel.py": "X = 1\n",
        "b/__init__.py": "",
        "b/deep.py": "import numpy\n",
        "b/unused.py": "",
    })
    closure = ImportGraph(root).closure("affect_pipeline.a.stage")
    assert closure == ["affect_pipeline", "affect_pipeline.a", "affect_pipeline.a.helper",
                       "affect_pipeline.a.rel", "affect_pipeline.a.stage", "affect_pipeline.b",
                       "affect_pipeline.b.deep"]


def test_relative_imports_resolve_from_a_package_init(tmp_path):
    path = tmp_path / "affect_pipeline" / "x" / "__init__.py"
    sure, maybe = parse_imports("affect_pipeline.x", path, b"from . import y\nfrom .. import z\n")
    assert sure == ["affect_pipeline", "affect_pipeline.x"]
    assert maybe == ["affect_pipeline.x.y", "affect_pipeline.z"]


def test_digest_changes_with_any_module_in_the_closure_only(tmp_path):
    root = _package(tmp_path, {"s.py": "from affect_pipeline import dep\n", "dep.py": "A = 1\n",
                               "other.py": "B = 1\n"})
    before = ImportGraph(root).digest("affect_pipeline.s")
    (root / "other.py").write_text("B = 2\n")
    assert ImportGraph(root).digest("affect_pipeline.s") == before
    (root / "dep.py").write_text("A = 2\n")
    assert ImportGraph(root).digest("affect_pipeline.s") != before


def test_launcher_is_not_stage_code(tmp_path):
    root = _package(tmp_path, {"s.py": "import affect_pipeline.warm\n", "warm.py": "X = 1\n"})
    assert "affect_pipeline.warm" not in ImportGraph(root).closure("affect_pipeline.s")


def test_cache_is_reused_and_a_corrupt_cache_is_ignored(tmp_path):
    root = _package(tmp_path, {"s.py": "from affect_pipeline import dep\n", "dep.py": ""})
    cache = tmp_path / "imports.json"
    want = ImportGraph(root, cache).digest("affect_pipeline.s")
    entries = json.loads(cache.read_text())
    assert {k.split(":")[0] for k in entries} == {"affect_pipeline", "affect_pipeline.s",
                                                  "affect_pipeline.dep"}
    # a cached parse is trusted only for the same source: an edit is parsed again
    (root / "s.py").write_text("from affect_pipeline import dep\nimport affect_pipeline.new\n")
    (root / "new.py").write_text("")
    assert "affect_pipeline.new" in ImportGraph(root, cache).closure("affect_pipeline.s")
    cache.write_text("{not json")
    assert ImportGraph(root, cache).digest("affect_pipeline.dep") == ImportGraph(root).digest(
        "affect_pipeline.dep")
    assert want != ImportGraph(root).digest("affect_pipeline.s")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_reaches_its_own_module_and_real_dependencies(stage):
    module = STAGES[stage].split(":")[0]
    closure = ImportGraph().closure(module)
    assert module in closure and "affect_pipeline.common.runtime" in closure
    assert len(code_digest(module)) == 16
