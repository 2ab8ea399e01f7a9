"""The architecture as checks: the import layers (import-linter) and DVC dependencies that
cover every file a stage runs."""

from __future__ import annotations

import ast
import functools
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SRC = REPO / "src"
# Imports no `import` statement shows: `package` builds the Bento, and BentoML imports the
# service named in its build call.
DYNAMIC = {"pipeline/package.py": ("serving.service",)}


def test_import_contracts_hold():
    """`lint-imports` (the contracts in pyproject.toml): layers only point down, no cycles."""
    tool = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(tool)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _imports(path: Path) -> set[str]:
    """Every module an ``import`` in ``path`` names, at any depth (function-level included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return out


def _registry_calls(path: Path) -> set[str]:
    """Which of the registry's importing functions ``path`` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "sightline.registry":
            names |= {a.name for a in node.names}
    return names


def _file(module: str) -> Path | None:
    """The repository file of a module of ``sightline`` or ``serving``, else ``None``."""
    parts = module.split(".")
    if parts[0] not in ("sightline", "serving"):
        return None
    base = (SRC if parts[0] == "sightline" else REPO).joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def closure(script: Path, model: str | None) -> set[Path]:
    """Files the stage ``python <script> <model>`` imports: the script, the ``pipeline`` modules
    it imports, and the modules of ``sightline``/``serving`` they import, transitively, with the
    packages above them. The registry imports a model's package when ``get_model`` is used,
    its metrics module when ``get_evaluation`` is, and every model's for ``served_models``."""
    from sightline.registry import list_models

    seen: set[Path] = set()
    todo = [script]
    todo += [_file(m) for m in DYNAMIC.get(str(script.relative_to(REPO)), ())]
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        names = _imports(path)
        calls = _registry_calls(path)
        names |= {f"sightline.models.{model}"} if model and "get_model" in calls else set()
        names |= {f"sightline.metrics.{model}"} if model and "get_evaluation" in calls else set()
        names |= (
            {f"sightline.models.{m}" for m in list_models()} if "served_models" in calls else set()
        )
        for name in names:
            if name in ("common",) or name.startswith("pipeline."):
                todo.append(REPO / "pipeline" / f"{name.split('.')[-1]}.py")
                continue
            parts = name.split(".")
            for i in range(2, len(parts) + 1):  # the packages above a module run first
                todo.append(_file(".".join(parts[:i])))
    return seen


@functools.cache
def _stages() -> tuple:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return tuple(
            (s.addressing, s.cmd, [d.def_path for d in s.deps], [o.def_path for o in s.outs])
            for s in repo.index.stages
        )


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


def test_the_root_package_imports_nothing():
    """``sightline/__init__.py`` runs on every import of the library; it holds only the version,
    which is why no stage lists it."""
    assert not _imports(SRC / "sightline/__init__.py")


@pytest.mark.parametrize("stage", _stages(), ids=lambda s: s[0])
def test_stage_deps_cover_every_file_it_imports(stage):
    """A file the stage imports and its ``deps`` miss is an edit DVC would not see. A trained
    model's directory stands for the code of the ``train`` stage that wrote it: a retrained
    model is always a changed directory (its ``train.json`` records the training time)."""
    name, cmd, deps, _ = stage
    argv = shlex.split(cmd)
    assert argv[0] == "python" and argv[1].startswith("pipeline/"), cmd
    model = argv[2] if len(argv) > 2 and not argv[2].startswith("-") else None
    covering = list(deps)
    for other, _, other_deps, outs in _stages():  # a dep written by a train stage
        if other.startswith("train@") and any(o in deps for o in outs):
            covering += other_deps
    missing = sorted(
        str(p.relative_to(REPO))
        for p in closure(
            REPO / argv[1], model if name.split("@")[0] in ("train", "evaluate") else None
        )
        if p != SRC / "sightline/__init__.py" and not _covered(p, covering)
    )
    assert not missing, f"{name}: imports files its deps miss: {missing}"


def test_the_closure_sees_what_a_stage_really_imports():
    """The check is not vacuous: a stage's closure holds its own model's code and evaluation and
    no other model's."""
    files = {str(p.relative_to(REPO)) for p in closure(REPO / "pipeline/evaluate.py", "gan")}
    assert "src/sightline/models/gan/__init__.py" in files
    assert "src/sightline/metrics/gan.py" in files
    assert "src/sightline/models/classifier/__init__.py" in files  # the scorer of samples
    assert not any("models/spam" in f or "metrics/clip" in f for f in files)
    train = {str(p.relative_to(REPO)) for p in closure(REPO / "pipeline/train.py", "spam")}
    assert "src/sightline/mail/corpus.py" in train and "src/sightline/metrics/spam.py" not in train


def test_every_model_package_has_the_same_modules():
    """params (schema), net (networks), module (LightningModule), data (DataModule), and the
    SPEC in ``__init__``: a reader finds the same part in the same file of every model."""
    from sightline.registry import list_models

    root = Path(__file__).resolve().parents[1] / "src" / "sightline" / "models"
    for name in list_models():
        present = {p.stem for p in (root / name).glob("*.py")}
        assert {"__init__", "params", "net", "module", "data"} <= present, (name, present)
        assert "SPEC = ModelSpec(" in (root / name / "__init__.py").read_text(), name


def test_no_source_file_is_over_400_lines():
    root = Path(__file__).resolve().parents[1]
    long = [
        (str(p.relative_to(root)), n)
        for folder in ("src", "serving", "pipeline", "benchmarks", "docs")
        for p in (root / folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    ]
    assert not long, long
