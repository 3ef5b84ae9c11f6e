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


def test_modules_import_no_script():
    """A module (a file without a __main__ block) imports modules only: the scripts stand above them all."""
    scripts = {name for name in MODULES if '__name__ == "__main__"' in (REPO / f"{name}.py").read_text()}
    assert {"train_gpt", "fineweb", "hellaswag", "generate"} <= scripts
    assert {name: imports_of(name) & scripts for name in MODULES if name not in scripts
            and imports_of(name) & scripts} == {}


def test_model_is_pure():
    """model.py needs torch and the standard library only; transformers is imported inside from_pretrained."""
    tree = ast.parse((REPO / "model.py").read_text())
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert top <= {"math", "dataclasses", "torch"}, top


def test_front_page_and_training_script_stay_short():
    """README.md at most 15,000 bytes (the front page; details go to docs/), train_gpt.py at most 650 lines and
    its main() at most 100, so that the loop can be read as a whole: the limits of the redesign."""
    assert len((REPO / "README.md").read_bytes()) <= 15_000
    source = (REPO / "train_gpt.py").read_text()
    assert len(source.splitlines()) <= 650
    [main] = [node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name == "main"]
    assert main.end_lineno - main.lineno + 1 <= 100
