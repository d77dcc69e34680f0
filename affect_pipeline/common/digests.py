"""Code digests: a short sha256 over a module and every package module it imports, transitively.

Snakemake tracks a rule's own code, not the package the rule calls; the rules pass
``code_digest(stage module)`` as a param so that ``--rerun-triggers params`` reruns exactly the
stages whose code changed. Resume files use the same digest: a resume file made by other code is
stale. Imports are read from the source (``ast``), lazy ones included, without importing anything.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path

PACKAGE = "affect_pipeline"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: the launcher runs stages but decides nothing they compute
NOT_CODE = {f"{PACKAGE}.warm"}


def module_file(module: str, root: Path = PACKAGE_DIR) -> Path:
    """`affect_pipeline.a.b` -> root/a/b.py (or root/a/b/__init__.py for a package)."""
    path = root.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def parse_imports(module: str, path: Path, src: bytes | None) -> tuple[list[str], list[str]]:
    """([package modules imported by name], [`from X import y` names: modules if a file exists])."""
    sure, maybe = set(), set()
    if src is None:
        return [], []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            sure.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == PACKAGE:
                sure.add(base)
                maybe.update(f"{base}.{a.name}" for a in node.names)
    return sorted(sure), sorted(maybe)


class ImportGraph:
    """The package's import graph, read lazily; parsed imports optionally cached in a JSON file
    keyed by each module's source digest (a dry run over many rules re-parses only edited modules).
    """

    def __init__(self, root: Path = PACKAGE_DIR, cache: str | os.PathLike | None = None):
        self.root = Path(root)
        self.cache = Path(cache) if cache else None
        self._parsed = self._read_cache()
        self._modules: dict[str, tuple[bytes | None, set[str], str]] = {}
        self._dirty = False

    def _read_cache(self) -> dict:
        if not self.cache:
            return {}
        try:
            entries = json.loads(self.cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items()
                if isinstance(v, list) and len(v) == 2 and all(isinstance(x, list) for x in v)}

    def save(self) -> None:
        """Keep only the entries of the modules read (an edited module's old entry goes). Atomic:
        cluster jobs parse the Snakefile concurrently; a read-only folder keeps no cache."""
        if not (self.cache and self._dirty):
            return
        entries = {key: self._parsed[key] for _, _, key in self._modules.values()}
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache.with_name(f".affect-tmp.{self.cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps(entries, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.cache)
            self._dirty = False
        except OSError:
            pass

    def imports(self, module: str) -> tuple[bytes | None, set[str]]:
        """(source or None when missing, package modules it imports)."""
        if module not in self._modules:
            path = module_file(module, self.root)
            src = path.read_bytes() if path.exists() else None
            key = f"{module}:{hashlib.sha256(src or b'').hexdigest()}"
            if key not in self._parsed:
                self._parsed[key] = list(parse_imports(module, path, src))
                self._dirty = True
            sure, maybe = self._parsed[key]
            found = set(sure) | {m for m in maybe if module_file(m, self.root).exists()}
            self._modules[module] = (src, found, key)
        return self._modules[module][:2]

    def closure(self, module: str) -> list[str]:
        """`module` and every package module it reaches, with the packages whose `__init__` an
        import runs, sorted."""
        todo, seen = [module], set()
        while todo:
            m = todo.pop()
            if m in seen or m in NOT_CODE:
                continue
            seen.add(m)
            parts = m.split(".")
            todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
            todo.extend(sorted(self.imports(m)[1]))
        return sorted(seen)

    def digest(self, module: str) -> str:
        """16 hex digits over the names and sources of `module`'s closure."""
        h = hashlib.sha256()
        for m in self.closure(module):
            src = self.imports(m)[0]
            h.update(m.encode() + (src if src is not None else b"missing"))
        self.save()
        return h.hexdigest()[:16]


def code_digest(module: str) -> str:
    """The digest of `module`'s code as this checkout has it (no cache)."""
    return ImportGraph().digest(module)
