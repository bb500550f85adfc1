"""The package's house rules: packages in data-flow order with no upward import, small files, a public API."""

import pathlib
import re

import spark_jax
from tests.conftest import REPO

ORDER = ("setting", "ntk", "algorithms", "runner", "lab")  # core modules (top level) come first
MAX_LINES = 400


def _layer(module: str) -> int:
    parts = module.split(".")
    return ORDER.index(parts[1]) + 1 if len(parts) > 1 and parts[1] in ORDER else 0


def _imports(text: str):
    for m in re.finditer(r"^\s*from (spark_jax[\w.]*) import \(?([^\n)]*)", text, re.M):
        source, names = m.group(1), m.group(2)
        if source != "spark_jax":
            yield source
        else:
            yield from (f"spark_jax.{n.split(' as ')[0].strip()}" for n in names.split(",") if n.strip())


def test_no_module_imports_a_later_package():
    upward = []
    for path in (REPO / "spark_jax").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        upward += [f"{module} imports {t}" for t in _imports(path.read_text()) if _layer(t) > _layer(module)]
    assert not upward, upward


def test_no_file_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in (REPO / "spark_jax").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_public_api_resolves():
    for name in spark_jax.__all__:
        assert getattr(spark_jax, name) is not None, name
    assert spark_jax.ntk_dfl.__module__ == "spark_jax.algorithms.ntk_dfl"
    assert pathlib.Path(spark_jax.__file__).parent == REPO / "spark_jax"
