"""Which project files each stage imports, transitively: what its `deps` in dvc.yaml must list.

    python -m tools.stage_deps          # prints each stage's code deps; exits 1 where dvc.yaml differs

The closure is read from the code itself (Python's ast, no import is executed): a stage script, the
modules of this project it imports, the modules those import, and so on. Third-party imports are
left out: requirements.txt pins them. tests/test_layout.py fails on any difference with dvc.yaml.
"""
import ast
import os
import sys

import yaml

from tools.project import REPO

DVC_YAML = os.path.join(REPO, "dvc.yaml")


def module_file(name, root):
    """The project file of a dotted module name (mnist_cnn.files -> mnist_cnn/files.py), or None."""
    base = os.path.join(root, *name.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return os.path.relpath(candidate, root)
    return None


def imported_names(path):
    """Every module name an import statement in the file may load, at any depth of the code."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            for alias in node.names:  # from mnist_cnn import files: files may be a module
                yield f"{node.module}.{alias.name}"


def import_closure(script, root=REPO):
    """The script and every project file it imports, directly or not, as sorted paths relative to root."""
    seen, todo = set(), [os.path.relpath(os.path.join(root, script), root)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(os.path.join(root, path)):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # a.b.c loads a, a.b and a.b.c
                found = module_file(".".join(parts[:depth]), root)
                if found and found not in seen:
                    todo.append(found)
    return sorted(seen)


def stage_script(cmd):
    """The script a stage's cmd runs: `python -m stages.train ...` -> stages/train.py."""
    words = cmd.split()
    if words[:2] == ["python", "-m"]:
        return module_file(words[2], REPO) or words[2]
    return words[1]


def code_deps(stage):
    """A stage's deps in dvc.yaml that are Python files of this project."""
    return sorted(dep for dep in stage.get("deps", []) if isinstance(dep, str) and dep.endswith(".py"))


def compare(dvc_yaml=DVC_YAML, root=REPO):
    """{stage: (declared code deps, import closure)} for every stage of dvc.yaml."""
    with open(dvc_yaml) as f:
        stages = yaml.safe_load(f)["stages"]
    return {name: (code_deps(stage), import_closure(stage_script(stage["cmd"]), root))
            for name, stage in stages.items()}


def main():
    differs = False
    for name, (declared, closure) in compare().items():
        print(f"{name}: {' '.join(closure)}")
        for path in sorted(set(closure) - set(declared)):
            print(f"  missing from dvc.yaml: {path}")
        for path in sorted(set(declared) - set(closure)):
            print(f"  in dvc.yaml but not imported: {path}")
        differs |= declared != closure
    return 1 if differs else 0


if __name__ == "__main__":
    sys.exit(main())
