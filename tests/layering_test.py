"""The import graph stays a DAG with the math at the leaves, and only entry points use absl."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clid_tf")
MODULES = sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py"))


def _imports(module):
    """(top-level imports, all imports) as dotted names, for one clid_tf module."""
    tree = ast.parse(open(os.path.join(PACKAGE, f"{module}.py")).read())
    top, every = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        every.update(names)
        if node in tree.body:
            top.update(names)
    return top, every


def _package_deps(names):
    return {n.split(".")[1] for n in names if n.startswith("clid_tf.") and n.count(".") >= 1}


@pytest.mark.parametrize("module,allowed", [
    ("clid", set()), ("noise", set()), ("meta_sets", set()), ("errors", set()),
    ("atomic_io", set()),
    ("distribute", set()), ("objectives", {"clid", "distribute"}),
    ("datasets", set()), ("splits", {"datasets", "meta_sets", "noise"}),
])
def test_leaf_modules_import_only_their_leaves(module, allowed):
    _, every = _imports(module)
    assert _package_deps(every) <= allowed


def test_only_entry_points_touch_absl_flags():
    for module in MODULES:
        top, every = _imports(module)
        uses_absl = any(n.startswith("absl") for n in every)
        assert not uses_absl or module in ("cli", "train", "audit"), module
        # audit defines its flags only inside its own main(), never at import
        if module == "audit":
            assert not any(n.startswith("absl") for n in top)


def test_cli_imports_no_tensorflow_at_module_level():
    top, _ = _imports("cli")
    assert not any(n.split(".")[0] in ("tensorflow", "keras") for n in top)
    assert _package_deps(top) <= {"atomic_io", "datasets", "errors"}


def test_import_graph_has_no_cycles():
    graph = {m: _package_deps(_imports(m)[1]) - {m} for m in MODULES}
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        assert state.get(node) != "active", " -> ".join(path + [node])
        state[node] = "active"
        for dep in graph.get(node, ()):
            visit(dep, path + [node])
        state[node] = "done"

    for module in MODULES:
        visit(module, [])
