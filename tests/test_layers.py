"""The library's floors: no brainseg module imports one from a higher floor (utils at the
bottom, engine at the top), and tools/ import the library only (never each other)."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = ["utils", "data", "layers", "modeling", "evaluation", "visualization", "inference", "engine"]


def _imports(path: Path, source: str = None):
    """Absolute names of the modules ``path`` (or ``source`` as if it were there) imports,
    relative imports resolved."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            elif node.module:
                yield node.module


def _floor(module: str):
    parts = module.split(".")
    if parts[0] != "brainseg" or len(parts) < 2 or parts[1] not in FLOORS:
        return None
    return FLOORS.index(parts[1])


def test_no_module_imports_a_higher_floor():
    upward = []
    for path in sorted((REPO / "brainseg").rglob("*.py")):
        own = _floor(".".join(path.relative_to(REPO).with_suffix("").parts))
        if own is None:
            continue
        for name in _imports(path):
            floor = _floor(name)
            if floor is not None and floor > own:
                upward.append(f"{path.relative_to(REPO)} imports {name}")
    assert not upward, "\n".join(upward)


def test_the_floor_check_sees_an_upward_import():
    probe = REPO / "brainseg" / "utils" / "probe.py"
    names = list(_imports(probe, "from ..engine import launch\nimport brainseg.data.io\nfrom . import io\n"))
    assert names == ["brainseg.engine", "brainseg.data.io", "brainseg.utils"]
    assert [_floor(n) > _floor("brainseg.utils.probe") for n in names] == [True, True, False]


# check_cuda_build.py builds the repository's own setup.py into a temporary folder (CI's proof that
# the CUDA sources compile): a repository script, not a CLI over the library.
REPOSITORY_SCRIPTS = {"check_cuda_build.py"}


@pytest.mark.parametrize("tool", sorted(p.name for p in (REPO / "tools").glob("*.py")))
def test_tools_are_thin_clis_over_the_library(tool):
    source = (REPO / "tools" / tool).read_text()
    assert not any(n.startswith("tools") for n in _imports(REPO / "tools" / tool))
    if tool not in REPOSITORY_SCRIPTS:
        assert len(source.splitlines()) <= 20, f"{tool} is not a thin CLI"
        assert "brainseg." in source
