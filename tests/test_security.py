"""Security, grepped over the whole package and the rules: no unsafe loads (torch.load without
weights_only=True, yaml.load, pickle) and no shells in the code; every path placeholder in a rule's
shell command quoted. The scanner itself is tested against known-bad and known-good snippets."""
from __future__ import annotations

import ast
import re

from conftest import REPO

SOURCES = sorted([*(REPO / "affect_pipeline").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")])
RULES = sorted([REPO / "Snakefile", *(REPO / "rules").glob("*.smk")])


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def unsafe_calls(src: str) -> list[tuple[int, str]]:
    """Calls that load code or hand strings to a shell, found on the syntax tree (multi-line safe)."""
    bad = []
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = ast.unparse(f)
        if name.endswith("torch.load"):
            wo = _kw(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                bad.append((node.lineno, f"{name}( without weights_only=True"))
        if name in ("yaml.load", "yaml.load_all") and "Safe" not in ast.unparse(_kw(node, "Loader") or ast.Constant(None)):
            bad.append((node.lineno, f"{name}( without a safe Loader"))
        if name in ("yaml.unsafe_load", "yaml.full_load", "os.system", "os.popen", "pickle.load", "pickle.loads",
                    "eval", "exec", "subprocess.getoutput", "subprocess.getstatusoutput"):
            bad.append((node.lineno, name))
        sh = _kw(node, "shell")
        if sh is not None and not (isinstance(sh, ast.Constant) and sh.value is False):
            bad.append((node.lineno, f"{name}(..., shell=...)"))
        ap = _kw(node, "allow_pickle")
        if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
            bad.append((node.lineno, f"{name}(..., allow_pickle=...)"))
    return bad


def test_security_scan_catches_what_it_should():
    """The scanner itself against known-bad and known-good snippets (so a pass means something)."""
    bad = ("torch.load(p)\ntorch.load(\n  p,\n  map_location='cpu')\nyaml.load(s)\nyaml.load(s, Loader=yaml.Loader)\n"
           "subprocess.run(cmd, shell=True)\nos.system('ls')\nnp.load(p, allow_pickle=True)\npickle.loads(b)\n")
    assert len(unsafe_calls(bad)) == 8
    good = ("torch.load(p, map_location='cpu', weights_only=True)\nyaml.safe_load(s)\n"
            "yaml.load(s, Loader=yaml.SafeLoader)\nsubprocess.run([a, b])\nnp.load(p)\n")
    assert unsafe_calls(good) == []


def test_security_no_unsafe_loads_or_shells_in_the_package():
    assert len(SOURCES) > 15 and any(p.name == "runtime.py" for p in SOURCES)
    found = [f"{p.relative_to(REPO)}:{ln}: {what}" for p in SOURCES for ln, what in unsafe_calls(p.read_text())]
    assert not found, "unsafe calls:\n" + "\n".join(found)


def test_security_rules_quote_paths_and_read_yaml_safely():
    """Rule files are not plain Python: grep them. Every path placeholder in a shell command is
    quoted (``{input:q}``, ``{output:q}``, ``{log:q}``, or a param built with shlex.quote)."""
    found = []
    for p in RULES:
        text = p.read_text()
        for i, line in enumerate(text.splitlines(), 1):
            if re.search(r"torch\.load\((?![^)]*weights_only=True)|yaml\.load\(|shell=True|os\.system\(", line):
                found.append(f"{p.name}:{i}: {line.strip()}")
            for ph in re.findall(r"\{((?:input|output|log)(?:\.\w+)?)(:q)?\}", line):
                if not ph[1]:
                    found.append(f"{p.name}:{i}: unquoted {{{ph[0]}}}")
    assert not found, "\n".join(found)
