"""The backend's import structure: a light plugin import and no import cycle (issues #15, #17)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tensorboard_plugin_aevis")
BACKEND = ["aevis_plugin", "contribution_service", "http_common", "bounded_cache", "run_reader", "model_artifact", "metadata"]


def test_importing_the_plugin_imports_neither_torch_nor_scipy():
    code = ("import sys, tensorboard_plugin_aevis.aevis_plugin; "
            "print(sorted(m for m in ('torch', 'torchvision', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _imports(module: str) -> set:
    """The package modules ``module`` imports anywhere in its source (top level or inside functions)."""
    path = os.path.join(PACKAGE, *module.split(".")) + ".py"
    if not os.path.exists(path):
        path = os.path.join(PACKAGE, *module.split("."), "__init__.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0] if "." in module else ""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y / from . import y
                parent = package if node.level == 1 else package.rsplit(".", node.level - 1)[0] if package.count(".") >= node.level - 1 else ""
                base = ".".join(p for p in (parent, base) if p)
            elif base.startswith("tensorboard_plugin_aevis"):
                base = base[len("tensorboard_plugin_aevis"):].lstrip(".")
            else:
                continue
            names = [f"{base}.{a.name}" if base else a.name for a in node.names]
            for name in [base] + names:
                if name and (os.path.exists(os.path.join(PACKAGE, *name.split(".")) + ".py")
                             or os.path.isdir(os.path.join(PACKAGE, *name.split(".")))):
                    found.add(name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("tensorboard_plugin_aevis."):
                    found.add(a.name[len("tensorboard_plugin_aevis."):])
    found.discard(module)
    return found


def test_no_import_cycle_between_backend_modules():
    graph = {}
    todo = list(BACKEND)
    while todo:  # every package module the backend reaches
        module = todo.pop()
        if module not in graph:
            graph[module] = _imports(module)
            todo.extend(graph[module])
    assert "aevis_plugin" not in graph["contribution_service"] and "contribution_service" not in graph["http_common"]
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join(path + [module])
        state[module] = "open"
        for imported in sorted(graph[module]):
            visit(imported, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


CONTRIBUTION = sorted("contribution." + f[:-3] for f in os.listdir(os.path.join(PACKAGE, "contribution"))
                      if f.endswith(".py") and f != "__init__.py")


def test_the_contribution_package_has_no_import_cycle_and_each_module_imports_alone():
    graph = {m: _imports(m) for m in CONTRIBUTION + ["contribution"]}
    assert len(CONTRIBUTION) >= 10 and graph["contribution.session"] >= {"contribution.gated_forward", "contribution.options"}
    assert not any(m == "contribution" for deps in graph.values() for m in deps), "a submodule imports the package's __init__"
    state = {}

    def visit(module, path):
        assert state.get(module) != "open", "import cycle: " + " -> ".join(path + [module])
        if state.get(module) is None:
            state[module] = "open"
            for imported in sorted(graph.get(module, ())):
                visit(imported, path + [module])
            state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_the_contribution_package_keeps_its_public_names():
    code = ("from tensorboard_plugin_aevis.contribution import ContributionOptions, ContributionResult, ContributionSession, "
            "ContributionTimeout, feature_map_contributions, prediction_contributions, MODES, DEFAULT_STEPS; "
            "import tensorboard_plugin_aevis as t; print(t.feature_map_contributions is feature_map_contributions)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
