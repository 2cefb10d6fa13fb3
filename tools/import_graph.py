"""Prints the package's import graph: one `module -> clid_tf modules it imports` line each.

Imports anywhere in a module count (function-level ones too). `--package` points at any
checkout's clid_tf folder, so two commits can be compared:

  git archive e0a15a5 clid_tf | tar -x -C /tmp/old && \\
      python tools/import_graph.py --package=/tmp/old/clid_tf
"""

from __future__ import annotations

import ast
import os

from absl import app, flags

from toolbox import ROOT

FLAGS = flags.FLAGS


def modules(package: str) -> dict[str, str]:
    """Dotted module name (relative to the package; '__init__' for it) -> file path."""
    found = {}
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), package)[:-3]
                found[rel.replace(os.sep, ".").replace(".__init__", "")] = os.path.join(
                    folder, name)
    return found


def graph(package: str) -> dict[str, list[str]]:
    """module -> sorted package modules it imports."""
    known = modules(package)
    out = {}
    for module, path in sorted(known.items()):
        deps = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")[1:] if name.startswith("clid_tf.") else []
                for n in range(len(parts), 0, -1):
                    if ".".join(parts[:n]) in known:
                        deps.add(".".join(parts[:n]))
                        break
        out[module] = sorted(deps - {module})
    return out


def main(argv):
    del argv
    for module, deps in graph(FLAGS.package).items():
        print(f"- {module} -> {', '.join(deps) if deps else '(none)'}")


if __name__ == "__main__":
    flags.DEFINE_string("package", os.path.join(ROOT, "clid_tf"), "The clid_tf folder.")
    app.run(main)
