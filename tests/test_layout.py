"""The layout keeps telling the architecture (docs/architecture.md): no module grows past a
few hundred lines but the one door to Docker, and a handler reads its input, calls one
service and answers, in a screen or less. The layers themselves are import-linter's
contracts (.importlinter), checked by `make lint`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "deepdockd"
MAX_MODULE_LINES = 600
MAX_HANDLER_LINES = 40
# docker.py is the one door to Docker, and may be the largest module.
LARGER = {"docker.py"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_has_modules() -> None:
    assert len(modules()) > 40
    assert (PACKAGE / "api" / "handlers").is_dir()


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_600_lines(path: Path) -> None:
    if path.name in LARGER:
        return
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)}: {lines} lines"


def handlers() -> list[tuple[str, int]]:
    found = []
    for path in sorted((PACKAGE / "api" / "handlers").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.AsyncFunctionDef) and not node.name.startswith("_"):
                assert node.end_lineno is not None
                found.append((f"{path.stem}.{node.name}", node.end_lineno - node.lineno + 1))
    return found


def test_every_route_has_a_handler_counted() -> None:
    from deepdockd.api.routes import ROUTES

    names = {f"{r.handler.__module__.rsplit('.', 1)[-1]}.{r.handler.__name__}" for r in ROUTES}  # type: ignore[attr-defined]
    assert names <= {name for name, _ in handlers()}


@pytest.mark.parametrize(("handler", "lines"), handlers())
def test_no_handler_is_over_40_lines(handler: str, lines: int) -> None:
    assert lines <= MAX_HANDLER_LINES, f"{handler}: {lines} lines"
