"""The import structure: no cycle anywhere in calmrl, counting imports inside functions and
type-only ones (each a module-to-module arrow); the objectives and the math never import the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

import calmrl

ROOT = Path(calmrl.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    mods = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != m and not m.startswith(t + ".") :     # a package's own __init__ is not an arrow back
                    graph[m].add(t)
    return graph


def _cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for k in sorted(graph[n]):
            if state.get(k) == 1:
                return stack[stack.index(k):] + [k]
            if not state.get(k):
                c = visit(k)
                if c:
                    return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if not state.get(n):
            c = visit(n)
            if c:
                return c
    return None


def test_no_import_cycle_in_calmrl():
    g = _graph()
    # packages re-export what they hold (calmrl.train's lazy names, calmrl.core's): arrows from a package
    # to its own submodules are its contents, not a dependency back up
    g = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in g.items()}
    assert _cycle(g) is None, " -> ".join(_cycle(g))


def test_the_math_and_the_objectives_never_import_the_trainer():
    g = _graph()
    for m, ts in g.items():
        if m.startswith(("calmrl.core", "calmrl.objectives", "calmrl.integrity")):
            assert not any(t.startswith(("calmrl.train", "calmrl.cli", "calmrl.experiments")) for t in ts), (m, ts)


def test_every_config_key_has_help_and_the_reference_page_is_current():
    import dataclasses
    from typing import get_type_hints

    from calmrl.train.config import Config, config_reference

    def walk(cls, prefix=""):
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from walk(hints[f.name], prefix + f.name + ".")
            else:
                yield prefix + f.name, f.metadata.get("help")
    missing = [k for k, h in walk(Config) if not h]
    assert not missing, f"config keys without help: {missing}"
    page = (ROOT.parents[1] / "docs" / "config.md").read_text()
    assert config_reference() in page, "docs/config.md is out of date: make docs"


def test_the_objectives_table_of_the_docs_is_the_registrys():
    from calmrl.objectives import registry_table

    page = (ROOT.parents[1] / "docs" / "objectives.md").read_text()
    assert registry_table() in page, "docs/objectives.md's table is out of date: make docs"


def test_import_calmrl_version_and_help_do_not_import_torch_and_the_lazy_names_are_core_s():
    import subprocess
    import sys

    code = ("import sys, calmrl; assert 'torch' not in sys.modules, 'import calmrl imported torch'; "
            "from calmrl.cli import main; main(['--version']); assert 'torch' not in sys.modules\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, '--help imported torch'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().startswith("calmrl "), r.stderr[-2000:]
    import calmrl
    import calmrl.core
    assert set(calmrl._CORE) == set(calmrl.core.__all__)
    assert calmrl.SharedLatentCalibrator is calmrl.core.SharedLatentCalibrator
