"""The layers of docs/architecture.md, enforced: import-linter's contracts in pyproject.toml hold for the package, and
an import that points up breaks them (so a wrong import fails CI, not a reviewer's eye)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                              "lint_imports_command.main(['--no-cache'])"]  # no cache folder left in the checkout


def _lint(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=folder, capture_output=True, text=True,
                          env={"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"})


def test_the_package_keeps_its_import_contracts() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def _lint_with(tmp_path, module: str, line: str) -> subprocess.CompletedProcess:
    """import-linter on a copy of the package with ``line`` appended to ``module`` (a path inside it)."""
    shutil.copytree(ROOT / "isscompress", tmp_path / "isscompress", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    edited = tmp_path / "isscompress" / module
    edited.write_text(edited.read_text() + f"\n{line}  # noqa: E402\n")
    return _lint(tmp_path)


def test_an_import_that_points_up_breaks_the_contract(tmp_path) -> None:
    result = _lint_with(tmp_path, "core/groups.py", "from ..verbs.shrink import shrink")  # the core reaching up
    assert result.returncode != 0
    assert "isscompress.core is not allowed to import isscompress.verbs" in result.stdout
    assert "isscompress.core.groups -> isscompress.verbs.shrink" in result.stdout


def test_deploying_through_the_stack_class_breaks_the_contract(tmp_path) -> None:
    result = _lint_with(tmp_path, "deploy/flat.py", "from ..architectures.stack_module import RecurrentModel")
    assert result.returncode != 0
    assert "isscompress.deploy.flat -> isscompress.architectures.stack_module" in result.stdout


def test_modules_and_functions_stay_small_enough_to_read() -> None:
    """docs/architecture.md's size rule: a module of at most 330 lines, a function of at most 50."""
    too_long = []
    for path in sorted((ROOT / "isscompress").rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(ROOT)
        if len(text.splitlines()) > 330:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50:
                too_long.append(f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "\n".join(too_long)


# Benchmarks that time one internal part on purpose (the deploy runtimes side by side; one training-loop step against
# a hand-written loop) and say so in their docstrings. Every other example uses only ``isscompress.__all__``.
INTERNALS_BENCHMARKS = {"examples/benchmarks/speed.py", "examples/benchmarks/finetune_ptb.py"}


def _isscompress_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "isscompress":
            names.update([node.module] if node.module != "isscompress" else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("isscompress."))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "isscompress":
            names.add(node.attr)
    return names


def test_examples_use_only_the_public_api() -> None:
    import isscompress

    internal = {}
    for path in sorted((ROOT / "examples").rglob("*.py")):
        if {"wheels", "model"} & set(path.parts):  # packages fetched for examples/real (gitignored): not ours
            continue
        name = str(path.relative_to(ROOT))
        used = _isscompress_names(ast.parse(path.read_text()))
        if name not in INTERNALS_BENCHMARKS and used - set(isscompress.__all__):
            internal[name] = sorted(used - set(isscompress.__all__))
    assert not internal, internal
    for name in INTERNALS_BENCHMARKS:  # each still says what internal part it times
        assert "isscompress" in (ROOT / name).read_text().split('"""')[1]


def test_the_public_api_check_sees_an_internal_import(tmp_path) -> None:
    tree = ast.parse("import isscompress\nfrom isscompress.kernels import rnn_kernel\nisscompress.fit(1)\n")
    assert _isscompress_names(tree) == {"isscompress.kernels", "fit"}
