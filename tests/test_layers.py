"""The package's layer order, read from the source: lower layers never import higher ones, and no
two modules import each other (directly or round a loop).

Every ``import`` counts, including those inside functions (a deferred import is still a
dependency; it only changes when the cost is paid). The order is the one of
``docs/architecture.md``::

    data, sparsity_pattern, errors → process → families → sinks → modifiers (and the package root,
    which registers them) → scoring, generation, export, diagnostics, runtime →
    lm_eval, commands, cli, console

Packages of one layer may import each other only where :data:`SAME_LAYER` lists it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sink_modifier"

LAYERS: list[set[str]] = [
    {"data", "sparsity_pattern", "errors"},
    {"process"},
    {"families"},
    {"sinks"},
    {"modifiers", ""},  # "": the package root, whose __init__ registers the modifiers
    {"scoring", "generation", "export", "diagnostics", "runtime"},
    {"lm_eval", "commands", "cli", "console", "__main__"},  # console: the entry points' logging
]
LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}

# (importer, imported) pairs of one layer that may depend on each other, and why.
SAME_LAYER = {
    ("", "modifiers"),  # the package root registers the modifiers for YAML recipes
    ("generation", "scoring"),  # the sampler scores denoiser logits with the one scoring core
    ("generation", "export"),  # the ONNX denoiser opens the file layout export-onnx writes
    ("diagnostics", "export"),  # analyze's figures are written with the one atomic writer
}
TOP = LAYER_OF["commands"]  # the entry points (lm-eval adapter, commands, cli) may use each other


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``sink_modifier`` modules ``name`` imports anywhere in its file, resolved to module names."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a non-module attribute path
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _top_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    unplaced = sorted({_top_package(m) for m in _modules()} - set(LAYER_OF))
    assert not unplaced, f"packages without a layer in tests/test_layers.py: {unplaced}"


def test_lower_layers_never_import_higher_ones():
    violations = []
    for importer, imported in sorted(_graph().items()):
        low = _top_package(importer)
        for target in sorted(imported):
            high = _top_package(target)
            if low == high or low not in LAYER_OF or high not in LAYER_OF:
                continue
            if LAYER_OF[high] > LAYER_OF[low]:
                violations.append(f"{importer} imports {target} (layer {LAYER_OF[low]} -> {LAYER_OF[high]})")
            elif LAYER_OF[high] == LAYER_OF[low] and LAYER_OF[low] != TOP and (low, high) not in SAME_LAYER:
                violations.append(f"{importer} imports {target} (same layer, not listed in SAME_LAYER)")
    assert not violations, "layer order broken:\n" + "\n".join(violations)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("importer, imported", sorted(SAME_LAYER))
def test_same_layer_exceptions_are_still_needed(importer, imported):
    """An allowed same-layer import that no longer exists should leave SAME_LAYER."""
    graph = _graph()
    assert any(_top_package(a) == importer and any(_top_package(b) == imported for b in targets)
               for a, targets in graph.items()), f"{importer} no longer imports {imported}"
