"""The import graph is layered: every clid_tf module imports only from lower layers, the
math sits at the bottom, and only the command line touches absl flags."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "clid_tf")

# Layer of every module, lowest first. A module may import (at module level or inside a
# function) only from layers strictly below its own.
LAYERS = [
    # 0: leaves with no package imports: the math, noise models, TF-free plumbing
    {"core", "metanets", "models", "data", "evaluation", "runs", "trainers", "trainers.meta",
     "trainers.dividemix", "trainers.fixmatch"},
    {"errors", "atomic_io", "core.clid", "data.noise", "data.meta_sets", "core.distribute", "core.schedules",
     "data.augment", "models.resnets", "core.lookahead", "core.meta_scope"},
    # 1: image files on disk, losses and the meta-net interface, the run folder layout,
    # float16 loss scaling, DivideMix's math
    {"data.image_files", "core.objectives", "runs.folder", "core.loss_scaling", "trainers.dividemix.mixmatch"},
    # 2: where inputs live (sources), VRI
    {"data.inputs", "metanets.vri"},
    # 3: what a dataset is, pipelines, meta-nets, backbones, the look-ahead
    {"data.datasets", "data.pipelines", "metanets.wnet", "models.backbones", "core.virtual"},
    # 4: loaders of each kind, splits, label-free selection, export, the semi-supervised
    # streams
    {"data.sources.npz", "data.sources.cifar", "data.sources.tfds", "data.splits", "evaluation.selection", "runs.export",
     "trainers.fixmatch.streams"},
    # 5: dispatch, the algorithms, label issues, the semi-supervised split
    {"data.sources", "trainers.meta.model", "trainers.fixmatch.model", "evaluation.label_issues", "data.ssl_splits"},
    # 6: callbacks that read models, selection and data; DivideMix's evaluation
    {"trainers.meta.small_loss", "runs.callbacks", "runs.tb_views", "evaluation.two_nets"},
    # 7-8: DivideMix's epochs (co-divide, streams), its model
    {"trainers.dividemix.streams"}, {"trainers.dividemix.model"},
    # 9-14: the command line (the only reader of FLAGS): flags, the parts of a run, the
    # DivideMix trainer, the audit (trains folds with those parts) and the semi-supervised
    # trainers (built from them), the training command, the package
    {"cli.flagdefs"}, {"cli.training"}, {"cli.train_dividemix"},
    {"cli.auditing", "cli.train_fixmatch"},
    {"cli.commands"}, {"cli"},
    # 15: entry points and the lazy public API
    {"train", "audit", "__init__"},
]
RANK = {module: rank for rank, layer in enumerate(LAYERS) for module in layer}
CLI = {"cli", "cli.flagdefs", "cli.training", "cli.train_dividemix", "cli.auditing",
       "cli.train_fixmatch", "cli.commands", "train", "audit"}


def _modules():
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.relpath(os.path.join(folder, name), PACKAGE)[:-3]
                found.append(path.replace(os.sep, ".").replace(".__init__", ""))
    return sorted(found)


def _source(module):
    path = os.path.join(PACKAGE, *module.split("."))
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
            # `from clid_tf.cli import training` imports the submodule; the package
            # itself counts only for names that are not submodules.
            names = [f"{node.module}.{a.name}" for a in node.names]
        every.update(names)
        if node in tree.body:
            top.update(names)
    return top, every


def package_deps(names):
    """clid_tf modules among dotted import names ('clid_tf.cli.flagdefs.FLAGS' -> cli.flagdefs)."""
    modules = set(_modules())
    deps = set()
    for name in names:
        if not name.startswith("clid_tf."):
            continue
        parts = name.split(".")[1:]
        for n in range(len(parts), 0, -1):  # longest prefix that is a module
            if ".".join(parts[:n]) in modules:
                deps.add(".".join(parts[:n]))
                break
        else:
            if parts and parts[0] == "__init__":
                deps.add("__init__")
    return deps


def import_graph():
    """module -> sorted package modules it imports (anywhere in its file)."""
    return {m: sorted(package_deps(_imports(m)[1]) - {m}) for m in _modules()}


def test_every_module_has_a_layer():
    assert set(_modules()) == set(RANK), set(_modules()) ^ set(RANK)


@pytest.mark.parametrize("module", sorted(RANK))
def test_module_imports_only_lower_layers(module):
    upward = [dep for dep in import_graph()[module] if RANK[dep] >= RANK[module]]
    assert not upward, f"{module} (layer {RANK[module]}) imports {upward}"


def test_only_the_command_line_touches_absl():
    for module in _modules():
        _, every = _imports(module)
        if any(n.startswith("absl") for n in every):
            assert module in CLI, module


def test_the_command_line_checks_input_before_tensorflow_starts():
    # Bad flags and data are reported in seconds, before TensorFlow is imported.
    for module in ("cli.flagdefs", "cli.training", "cli.train_dividemix", "cli.auditing",
                   "cli.train_fixmatch", "cli.commands", "data.sources", "data.datasets", "data.splits",
                   "data.image_files", "data.sources.npz", "runs.folder", "data.ssl_splits", "__init__"):
        top, _ = _imports(module)
        assert not any(n.split(".")[0] in ("tensorflow", "keras") for n in top), module
