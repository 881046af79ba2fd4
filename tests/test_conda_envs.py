"""The conda envs of the rules provide what their scripts import, at the versions of requirements.txt.

conda-forge is not reachable here, so the env files are checked, not built: for every rule with a
``conda:`` env, the third-party modules its ``workflow_scripts`` module imports -- anywhere in the
file, and transitively through ``rmi`` -- are mapped to their distributions (through the installed
packages' metadata: PIL -> pillow, yaml -> PyYAML, pydensecrf -> pydensecrf2) and looked up in the
env file.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from conftest import REPO

FIRST_PARTY = {"rmi", "workflow_scripts"}
#: Methods whose library imports an optional dependency when they are called.
OPTIONAL_IMPORTS = {"to_markdown": "tabulate"}  # pandas.DataFrame.to_markdown
#: conda-forge package names that differ from the PyPI distribution's
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def rules() -> dict[str, tuple[str, str]]:
    """``rule -> (env file, workflow_scripts module)`` from ``rules/*.smk`` (rules under an ``if`` included)."""
    found = {}
    rule = r"^([ \t]*)rule (\w+):\n(.*?)(?=^(?!\1[ \t]|\n)|\Z)"  # body: the lines indented deeper than `rule`
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for _, name, body in re.findall(rule, smk.read_text(), re.M | re.S):
            env = re.search(r'conda:\s*"\.\./(envs/[\w.-]+\.yaml)"', body)
            script = re.search(r"python -m workflow_scripts\.(\w+)", body)
            assert env and script, f"rule {name} ({smk.name}) lacks a conda env or a workflow_scripts call"
            found[name] = (env.group(1), script.group(1))
    return found


def module_file(module: str) -> Path | None:
    """The source file of a first-party module (``None`` if ``module`` names no module)."""
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def direct_needs(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    """``(first-party modules, third-party top-level names)`` that one file imports or needs."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute) and node.attr in OPTIONAL_IMPORTS:
            names = [OPTIONAL_IMPORTS[node.attr]]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in FIRST_PARTY:
                ours.update(p for p in _parents(name) if module_file(p))
            elif top not in sys.stdlib_module_names:
                theirs.add(top)
    return frozenset(ours), frozenset(theirs)


def _parents(module: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c`` (importing a module runs its packages' __init__)."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def third_party_imports(script: str) -> set[str]:
    """Top-level third-party modules that ``workflow_scripts.<script>`` needs, through ``rmi``."""
    todo, seen, needed = [f"workflow_scripts.{script}"], set(), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        ours, theirs = direct_needs(module_file(module))
        needed |= theirs
        todo.extend(ours)
    return needed


@cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution(module: str) -> str:
    """The (normalised) name of the installed distribution that provides top-level ``module``."""
    dists = _distributions().get(module)
    assert dists, f"{module} is imported but no installed distribution provides it"
    return normalize(dists[0])


def pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[normalize(name)] = version
    return pins


def env_packages(env_file: str) -> dict[str, str]:
    """``{distribution: version}`` of an env file (conda ``name=version`` and pip ``name==version``)."""
    spec = yaml.safe_load((REPO / env_file).read_text())
    packages = {}
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            for pip_dep in dep.get("pip", []):
                name, _, version = pip_dep.partition("==")
                packages[normalize(name)] = version
        else:
            name, _, version = dep.partition("=")
            name = normalize(name)
            packages[CONDA_TO_PYPI.get(name, name)] = version
    return packages


RULES = rules()


def test_every_rule_is_checked():
    assert {"train", "train_lockstep", "predict", "densecrf", "evaluate", "tables", "figures", "cache"} <= set(RULES)


def test_import_scan_follows_rmi():
    """The scan sees imports made inside functions and optional ones triggered by a call."""
    assert {"torch", "h5py", "numpy"} <= third_party_imports("train")
    assert "tabulate" in third_party_imports("tables")  # DataFrame.to_markdown in rmi/tables.py


@pytest.mark.parametrize("rule", sorted(RULES))
def test_conda_env_provides_what_the_script_imports(rule):
    env_file, script = RULES[rule]
    provided, pins = env_packages(env_file), pinned()
    for module in sorted(third_party_imports(script)):
        dist = distribution(module)
        assert dist in pins, f"{dist} (imported as {module} by rule {rule}) is not pinned in requirements.txt"
        assert dist in provided, f"rule {rule}: {env_file} lacks {dist} (imported as {module})"
        assert provided[dist] == pins[dist], (
            f"rule {rule}: {env_file} has {dist} {provided[dist]!r}, requirements.txt pins {pins[dist]}"
        )
