"""The package's plan, checked (issue 29): a rule's module is found from its name and its .smk file
in one hop; the import graph has no circle and no import runs back up a floor; modules and
functions stay small enough to read. Each check is also run on a small made-up case it must
catch, so that a pass means something.

The rules files are read as text (rule blocks and their ``shell:`` strings), the package with
``ast`` (lazy imports inside functions included, as the code digests read them): nothing is
imported or run.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

from affect_pipeline.__main__ import STAGES
from affect_pipeline.common.digests import PACKAGE, module_file, parse_imports

PKG = REPO / PACKAGE

#: the floors of the package, bottom to top. A module may import its own subpackage and the
#: floors below its own, nothing on its floor's other subpackages and nothing above. The
#: package's ``__init__`` is below everything: every import of the package runs it.
FLOORS: list[set[str]] = [
    {"__init__"},
    {"common"},
    {"data"},
    {"faces"},
    {"mae", "audio"},
    {"temporal"},
    {"submit"},
    {"affect_predict"},
    {"demo"},                     # the demo generator may use anything below it
    {"__main__", "warm"},         # the command line and its warm launcher
]
#: the package's top-level modules that form one group (they may import each other)
TOP = {"__main__", "warm"}
MAX_LINES = 400
MAX_PARAMS = 8


# ---------------------------------------------------------------- the rules files, as text
RULE_HEAD = re.compile(r"^(?P<indent>[ \t]*)(?:rule|checkpoint)[ \t]+(?P<name>\w+)[ \t]*:", re.M)
#: a stage run by a shell command: the warm launcher, the plain module, or the rule's
#: ``{params.launch}`` (common.smk's torch_launcher: ``affect`` or ``torchrun ... -m affect_pipeline``)
STAGE_CALL = re.compile(r"(?:(?<![\w.-])affect|python -m affect_pipeline|\{params\.launch\})[ \t]+(\w+)")


def rule_blocks(text: str) -> dict[str, str]:
    """{rule name: its block's text}: from ``rule x:`` / ``checkpoint x:`` to the next line that is
    not blank and not indented deeper than the header (rules nested under ``if`` included)."""
    blocks = {}
    lines = text.splitlines()
    heads = [(m.group("name"), len(m.group("indent")), text.count("\n", 0, m.start())) for m in RULE_HEAD.finditer(text)]
    for name, indent, start in heads:
        end = start + 1
        while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
            end += 1
        blocks[name] = "\n".join(lines[start:end])
    return blocks


def shell_of(block: str) -> str | None:
    """The block's ``shell:`` command (its string literals joined), or None."""
    lines = block.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^([ \t]*)shell:[ \t]*(.*)$", line)
        if not m:
            continue
        indent, body = len(m.group(1)), [m.group(2)] if m.group(2).strip() else []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            body.append(nxt.strip())
        text = "\n".join(b for b in body if b and not b.startswith("#"))
        try:
            return ast.literal_eval(f"({text})")
        except (ValueError, SyntaxError):
            return text
    return None


def stage_rules(smk_texts: dict[str, str]) -> dict[tuple[str, str], str]:
    """{(smk file stem, rule name): stage} for every rule whose shell runs a stage."""
    found = {}
    for stem, text in smk_texts.items():
        for rule, block in rule_blocks(text).items():
            shell = shell_of(block)
            m = STAGE_CALL.search(shell or "")
            if m and (not m.group(0).startswith("{params.launch}") or "launch=torch_launcher(" in block):
                found[(stem, rule)] = m.group(1)
    return found


def misplaced_rule_modules(smk_texts: dict[str, str], stages: dict[str, str]) -> list[str]:
    """Rules whose stage module is not ``affect_pipeline/<smk stem>/<rule name>.py``."""
    bad = []
    for (stem, rule), stage in sorted(stage_rules(smk_texts).items()):
        if stage not in stages:
            bad.append(f"rules/{stem}.smk: rule {rule} runs stage {stage!r}, which __main__.STAGES does not have")
            continue
        module = stages[stage].split(":")[0]
        want = f"{PACKAGE}.{stem}.{rule}"
        if module != want:
            bad.append(f"rules/{stem}.smk: rule {rule} runs {module} ({stages[stage]}), expected {want} "
                       f"({PACKAGE}/{stem}/{rule}.py)")
    return bad


def smk_texts() -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted((REPO / "rules").glob("*.smk"))}


def test_rule_module_check_catches_a_misplaced_module():
    toy = {"mae": 'rule pretrain_mae:\n    params:\n        launch=torch_launcher(1),\n    shell:\n'
                  '        "{params.launch} pretrain_mae --out {output:q}"\n        " > {log:q} 2>&1"\n\n\n'
                  'rule visual_features:\n    shell:\n        "affect visual_features --out {output:q}"\n',
           "demo": 'if "demo" in config:\n\n    checkpoint make_demo:\n        shell:\n'
                   '            "python -m affect_pipeline make_demo --out x"\n\n    rule plain:\n'
                   '        run:\n            pass\n'}
    stages = {"pretrain_mae": "affect_pipeline.mae.pretrain_mae:main",
              "visual_features": "affect_pipeline.mae.features:main",
              "make_demo": "affect_pipeline.data.make_demo:main"}
    assert stage_rules(toy) == {("mae", "pretrain_mae"): "pretrain_mae", ("mae", "visual_features"): "visual_features",
                                ("demo", "make_demo"): "make_demo"}
    bad = misplaced_rule_modules(toy, stages)
    assert len(bad) == 2 and "rule make_demo" in bad[0] and "rule visual_features" in bad[1], bad
    assert misplaced_rule_modules(toy, {**stages, "visual_features": "affect_pipeline.mae.visual_features:main",
                                        "make_demo": "affect_pipeline.demo.make_demo:main"}) == []
    assert "not have" in misplaced_rule_modules(toy, {})[0]


def test_every_rule_module_lives_in_the_folder_of_its_smk_file_named_like_the_rule():
    found = stage_rules(smk_texts())
    print("\n" + "\n".join(f"rules/{s}.smk: {r} -> {STAGES.get(st, '?')}" for (s, r), st in sorted(found.items())))
    # the parse sees the rules: every stage but the commands a user runs on a finished run (the
    # validator, the model bundle's export) is run by one
    assert set(STAGES) - set(found.values()) <= {"validate_submission", "export_models"}, \
        set(STAGES) - set(found.values())
    assert {("demo", "make_demo"), ("mae", "pretrain_mae")} <= set(found)   # nested under `if`; {params.launch}
    bad = misplaced_rule_modules(smk_texts(), STAGES)
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- the import graph
def package_modules(root: Path = PKG) -> dict[str, Path]:
    """{dotted module name: file} of every .py file of the package."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = [root.name, *p.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph(root: Path = PKG) -> dict[str, set[str]]:
    """{module: package modules it imports}, read with ast (lazy imports included)."""
    mods = package_modules(root)
    graph = {}
    for name, path in mods.items():
        sure, maybe = parse_imports(name, path, path.read_bytes())
        graph[name] = {m for m in sure if m in mods} | {m for m in maybe if module_file(m, root).exists() and m in mods}
        graph[name].discard(name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_circle_check_catches_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_reads_lazy_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "x").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "x" / "__init__.py").write_text("")
    (pkg / "x" / "a.py").write_text(f"def f():\n    from {PACKAGE}.x import b\n")
    (pkg / "x" / "b.py").write_text("from . import a\n")
    g = import_graph(pkg)
    assert g[f"{PACKAGE}.x.a"] >= {f"{PACKAGE}.x.b"} and f"{PACKAGE}.x.a" in g[f"{PACKAGE}.x.b"]
    assert circles(g) == [[f"{PACKAGE}.x.a", f"{PACKAGE}.x.b"]]


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 40 and any(graph.values())
    found = circles(graph)
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


# ---------------------------------------------------------------- floors
def group_of(module: str) -> str:
    """The subpackage of ``affect_pipeline.x.y`` (x); a top-level module's own name;
    ``__init__`` for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def floor_of(group: str, floors: list[set[str]]) -> int:
    hits = [i for i, f in enumerate(floors) if group in f]
    assert len(hits) == 1, f"{group!r} is on {len(hits)} floors: give it one in FLOORS"
    return hits[0]


def upward_imports(graph: dict[str, set[str]], floors: list[set[str]], top: set[str] = TOP) -> list[str]:
    """Imports that reach the module's own floor in another subpackage, or a floor above."""
    bad = []
    for mod, deps in sorted(graph.items()):
        g = group_of(mod)
        for dep in sorted(deps):
            h = group_of(dep)
            if g == h or (g in top and h in top):
                continue
            a, b = floor_of(g, floors), floor_of(h, floors)
            if b >= a:
                where = "the same floor" if a == b else f"floor {b}, above its floor {a}"
                bad.append(f"{mod} (floor {a}: {g}) imports {dep} ({h}: {where})")
    return bad


def test_floor_check_catches_upward_and_sideways_imports():
    p = PACKAGE
    graph = {f"{p}.common.x": {f"{p}.data.y"}, f"{p}.mae.m": {f"{p}.audio.a", f"{p}.mae.n", f"{p}.common.x"},
             f"{p}.demo.d": {f"{p}.submit.s"}, f"{p}.warm": {f"{p}.__main__"}, f"{p}": set()}
    bad = upward_imports(graph, FLOORS)
    assert len(bad) == 2 and "common.x" in bad[0] and "mae.m" in bad[1] and "same floor" in bad[1], bad


def test_every_module_has_a_floor():
    groups = {group_of(m) for m in package_modules()}
    for g in groups:
        floor_of(g, FLOORS)
    assert groups == set().union(*FLOORS), groups ^ set().union(*FLOORS)


def test_no_import_runs_back_up_a_floor():
    bad = upward_imports(import_graph(), FLOORS)
    assert not bad, "imports that run back up a floor:\n" + "\n".join(bad)


# ---------------------------------------------------------------- size
def long_functions(src: str, max_params: int = MAX_PARAMS) -> list[tuple[str, int, int]]:
    """(qualified name, line, parameter count) of every function with more than ``max_params``
    parameters (*args and **kwargs count; a method's self / cls does not)."""
    out = []

    def walk(node, prefix, in_class):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                names = [x.arg for x in (*a.posonlyargs, *a.args)]
                n = len(names) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
                if in_class and names and names[0] in ("self", "cls"):
                    n -= 1
                if n > max_params:
                    out.append((f"{prefix}{child.name}", child.lineno, n))
                walk(child, f"{prefix}{child.name}.", False)
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.", True)
            else:
                walk(child, prefix, in_class)

    walk(ast.parse(src), "", False)
    return out


def test_size_checks_catch_long_signatures():
    src = ("def f(a, b, c, d, e, f, g, h, *rest):\n    pass\n"
           "class K:\n    def m(self, a, b, c, d, e, f, g, h):\n        pass\n"
           "    def n(self, a, b, c, d, e, f, g, h, i):\n        def inner(*, a, b, c, d, e, f, g, h, **kw):\n"
           "            pass\n")
    assert long_functions(src) == [("f", 1, 9), ("K.n", 6, 9), ("K.n.inner", 7, 9)]


def test_no_module_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in sorted(PKG.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_function_over_8_parameters():
    bad = [f"{p.relative_to(REPO)}:{line}: {name} ({n} parameters)"
           for p in sorted(PKG.rglob("*.py")) for name, line, n in long_functions(p.read_text(encoding="utf-8"))]
    assert not bad, f"functions with more than {MAX_PARAMS} parameters:\n" + "\n".join(bad)
