"""The package's structure: modules import only from their own layer or the layers below, with no cycle, and
only the command line (ui, commands, cli) knows typer or rich."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dyme_cli"

# Bottom to top; a module (or every module of a subpackage) belongs to one layer. docs/architecture.md draws it.
LAYERS = [
    ["errors", "hub", "verdict", "dyme", "losses"],
    ["recipe", "data", "plugins"],
    ["rundir", "verify_pool", "tiny_models", "checking"],
    ["modeling", "optim", "processes"],
    ["rollout"],
    ["batch"],
    ["scoring", "traces"],
    ["evaluate", "pseudo_thinking", "plan", "prepare", "supervision"],
    ["inspect_run", "report_html", "run_report", "step"],
    ["checkpoint"],
    ["runstart"],
    ["trainer"],
    ["compare"],
    ["ui"],
    ["commands"],
    ["cli", "__main__"],
]
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}
COMMAND_LINE = {"ui", "commands", "cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(dyme_cli modules, top-level external packages) that a file imports, lazily imported ones included."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dyme_cli":
                external.add(target.split(".")[0])
                continue
            for alias in node.names:  # `from . import x` and `from .pkg import module` name modules
                candidate = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).is_file() or \
                    (PACKAGE.parent / candidate.replace(".", "/")).is_dir()
                internal.add(candidate if is_module else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                (internal.add(alias.name) if top == "dyme_cli" else external.add(top))
    internal.discard(name)
    return internal, external


def _graph() -> dict[str, tuple[set[str], set[str]]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _unit(module: str) -> str:
    """The layer unit of a module: `dyme_cli.pseudo_thinking.detectors` -> `pseudo_thinking`."""
    return module.split(".")[1] if "." in module else "dyme_cli"


GRAPH = _graph()


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "dyme_cli"))
def test_imports_only_from_its_layer_or_below(module):
    assert _unit(module) in LAYER, f"{module} is in no layer: add it to LAYERS and to docs/architecture.md"
    above = sorted(dep for dep in GRAPH[module][0] if LAYER[_unit(dep)] > LAYER[_unit(module)])
    assert not above, f"{module} imports modules of a higher layer: {above}"


def test_no_import_cycle():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(GRAPH.get(module, (set(), set()))[0]):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(path + [module, dep])
            if dep not in state:
                visit(dep, path + [module])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_only_the_command_line_uses_typer_and_rich():
    engine = {m: external for m, (_, external) in GRAPH.items() if _unit(m) not in COMMAND_LINE}
    offenders = sorted(m for m, external in engine.items() if external & {"typer", "rich"})
    assert not offenders, f"engine modules importing typer or rich: {offenders}"
