"""The import graph is packages in layers: every module imports only from its own package
or from packages of lower layers, the module graph has no cycle, sibling trainers do not
import each other, and only the command line and the trainers' declarations touch absl flags."""

import ast
import functools
import os

import pytest

from tests.helpers import ROOT

PACKAGE = os.path.join(ROOT, "clid_tf")
# The trainer packages (clid_tf/trainers/NAME/): one unit each, found, not listed.
TRAINER_PACKAGES = {f"trainers.{name}" for name in os.listdir(os.path.join(PACKAGE, "trainers"))
                    if os.path.isfile(os.path.join(PACKAGE, "trainers", name, "__init__.py"))}

# Layer of every unit (a package, or a module at clid_tf's top level), lowest first. A
# module may import (at module level or inside a function) from its own unit and from
# units of lower layers only.
LAYERS = [
    {"errors", "names", "atomic_io", "serializables"},  # plumbing without package imports
    {"core"},                                         # math and the step machinery
    {"metanets", "models", "data"},                   # meta-nets, backbones, data
    {"evaluation"},                                   # selection, ensembles, label issues
    {"runs"},                                         # run folder, callbacks, export
    {"trainers"},                                     # the Trainer contract and registry
    TRAINER_PACKAGES,                                 # one package each
    {"cli"},                                          # the command line
    {"train", "audit", "__init__"},                   # entry points and the public API
]
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}
# The modules that may import absl: the command line, and a trainer's declaration (its
# TensorFlow-free __init__), which defines the flags only that trainer reads.
ABSL = ("cli", "train", "audit")
# Modules the command line imports before it has checked its input: no TensorFlow at
# their top level, so bad flags and data are one line within seconds.
BEFORE_TENSORFLOW = ("__init__", "serializables", "names", "errors", "atomic_io", "metanets",
                     "trainers", *sorted(TRAINER_PACKAGES), "data.sources",
                     "data.sources.digits", "data.sources.cifar", "data.sources.npz",
                     "data.sources.files", "data.sources.tfds",
                     "data.datasets", "data.splits", "data.ssl_splits", "data.image_files",
                     "data.inputs", "data.noise", "data.meta_sets", "runs.folder")


def modules():
    """Dotted module names relative to clid_tf ('__init__' for the package itself)."""
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.relpath(os.path.join(folder, name), PACKAGE)[:-3]
                found.append(path.replace(os.sep, ".").replace(".__init__", ""))
    return sorted(found)


def unit_of(module: str) -> str:
    """The layered unit of a module: 'trainers.meta' for the trainer package
    trainers/meta/, the first component otherwise."""
    parts = module.split(".")
    if parts[0] == "trainers" and len(parts) > 1 and os.path.isdir(
            os.path.join(PACKAGE, "trainers", parts[1])):
        return ".".join(parts[:2])
    return parts[0]


def _source(module):
    path = os.path.join(PACKAGE, *module.split("."))
    if module == "__init__":
        path = os.path.join(PACKAGE, "__init__")
    return open(path + ".py" if os.path.isfile(path + ".py")
                else os.path.join(path, "__init__.py")).read()


def _imports(module):
    """(top-level imports, all imports) as dotted names, for one clid_tf module."""
    tree = ast.parse(_source(module))
    top, every = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from clid_tf.cli import flags` imports the submodule; the package itself
            # counts only for names that are not submodules.
            names = [f"{node.module}.{a.name}" for a in node.names]
        every.update(names)
        if node in tree.body:
            top.update(names)
    return top, every


def package_deps(names, known):
    """clid_tf modules among dotted import names ('clid_tf.cli.flags.FLAGS' -> cli.flags)."""
    deps = set()
    for name in names:
        if name == "clid_tf" or not name.startswith("clid_tf."):
            continue
        parts = name.split(".")[1:]
        for n in range(len(parts), 0, -1):  # the longest prefix that is a module
            if ".".join(parts[:n]) in known:
                deps.add(".".join(parts[:n]))
                break
    return deps


@functools.lru_cache(maxsize=None)  # parsed once per test process, not once per module
def import_graph():
    """module -> sorted clid_tf modules it imports (anywhere in its file)."""
    known = set(modules())
    return {m: sorted(package_deps(_imports(m)[1], known) - {m}) for m in known}


def test_every_unit_has_a_layer():
    assert {unit_of(m) for m in modules()} == set(RANK)


@pytest.mark.parametrize("module", modules())
def test_module_imports_its_own_unit_or_lower_layers(module):
    own = unit_of(module)
    upward = [dep for dep in import_graph()[module]
              if unit_of(dep) != own and RANK[unit_of(dep)] >= RANK[own]]
    assert not upward, f"{module} ({own}, layer {RANK[own]}) imports {upward}"


def test_the_module_graph_has_no_cycle():
    graph, state, path = import_graph(), {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for dep in graph[module]:
            if state.get(dep) == "open":
                raise AssertionError(" -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        state[module] = "done"
        path.pop()

    for module in graph:
        if module not in state:
            visit(module)


def test_only_the_command_line_and_the_trainer_declarations_touch_absl():
    for module in modules():
        _, every = _imports(module)
        if any(n.startswith("absl") for n in every):
            declaration = module.startswith("trainers.") and module == unit_of(module)
            assert unit_of(module) in ABSL or declaration, module


def test_the_command_line_checks_input_before_tensorflow_starts():
    for module in BEFORE_TENSORFLOW:
        top, _ = _imports(module)
        assert not any(n.split(".")[0] in ("tensorflow", "keras") for n in top), module
