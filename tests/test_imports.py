"""python -m pytest tests/test_imports.py -v

The shape of the house: imports go one way, so every module can be read (and tested) without the ones above it.
"""

import ast

from conftest import REPO

MODULES = sorted(p.stem for p in REPO.glob("*.py"))


def imports_of(name: str) -> set[str]:
    """The repository's own modules that a top-level file imports, anywhere in it (functions included)."""
    tree = ast.parse((REPO / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(MODULES)


def test_no_import_circle():
    """Following the imports between the repository's files never comes back to where it started."""
    graph = {name: imports_of(name) for name in MODULES}
    done, path = set(), []

    def visit(name):
        assert name not in path, f"import circle: {' -> '.join(path[path.index(name):] + [name])}"
        if name in done:
            return
        path.append(name)
        for dep in graph[name]:
            visit(dep)
        path.pop()
        done.add(name)
    for name in MODULES:
        visit(name)


def test_nothing_imports_the_training_script():
    """train_gpt.py is the top of the house: no other file of the repository imports it (bench/ and tests/ may)."""
    assert [name for name in MODULES if "train_gpt" in imports_of(name)] == []


def test_model_is_pure():
    """model.py needs torch and the standard library only; transformers is imported inside from_pretrained."""
    tree = ast.parse((REPO / "model.py").read_text())
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert top <= {"math", "dataclasses", "torch"}, top
