"""The package's dependency rules (docs/architecture.md), read from the source with ``ast``:
no import cycles, the leaf layer imports nothing else from dsquant, backends never import the
front end, no module uses another module's private names, no dispatch by ``getattr``."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dsquant"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
# compiled modules: importable names, not Python sources
MODULES = set(SOURCES) | {_module_name(p) for p in PACKAGE.rglob("*.pyx")}


def _is_package(name: str) -> bool:
    return SOURCES.get(name, Path()).name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str):
    """(imported dsquant module, private name it takes from it or None, line) for every import,
    at module level or inside functions."""
    tree = ast.parse(SOURCES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dsquant":
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target.split(".")[0] != "dsquant":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:
                    yield sub, None, node.lineno
                else:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    yield target, alias.name if private else None, node.lineno


GRAPH = {m: sorted({t for t, _, _ in _imports(m) if t in MODULES and t != m}) for m in SOURCES}


def test_the_walk_sees_the_package():
    assert {"dsquant.core.dtypes", "dsquant.ops.fake", "dsquant.backends.cpu.host"} <= set(GRAPH)
    assert "dsquant.core.dtypes" in GRAPH["dsquant.backends.cuda.kernels"]


def test_no_import_cycles():
    """Imports between dsquant's modules (the top-level facade ``dsquant`` excepted: it only
    re-exports) form no cycle."""
    graph = {m: [t for t in deps if t != "dsquant"] for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("layer, forbidden", [
    ("dsquant.core", ("dsquant.",)),                                     # the leaf: nothing else
    ("dsquant.interop", ("dsquant.ops", "dsquant.backends", "dsquant.distributed", "dsquant.bench")),
    ("dsquant.backends", ("dsquant.ops", "dsquant.distributed", "dsquant.bench", "dsquant.compat")),
    ("dsquant.ops", ("dsquant.backends", "dsquant.distributed", "dsquant.bench", "dsquant.compat")),
])
def test_dependencies_point_one_way(layer, forbidden):
    for module, deps in GRAPH.items():
        if module == layer or module.startswith(layer + "."):
            bad = [d for d in deps
                   if d == "dsquant" or any(d.startswith(f) for f in forbidden) and not d.startswith(layer)]
            assert not bad, f"{module} imports {bad}"


def test_no_private_names_across_modules():
    found = [f"{m}:{line} takes {name} from {t}" for m in SOURCES for t, name, line in _imports(m) if name]
    for module, path in SOURCES.items():
        tree = ast.parse(path.read_text())
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                   for a in n.names
                   if f"{_resolve(module, n) if isinstance(n, ast.ImportFrom) else ''}.{a.name}".lstrip(".") in MODULES}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not found, "\n".join(found)


def test_no_dispatch_by_getattr():
    """getattr appears only where a framework's dtype object is looked up by its name (adapters)
    or an optional attribute is read with a default; never to find an implementation."""
    allowed = {"dsquant.interop.adapters", "dsquant._info", "dsquant.compat.deepspeed",
               "dsquant.torch",                   # a torch dtype object by its name, as the adapters do
               "dsquant.compat.deepspeed_plugin"}  # DeepSpeed's module caches, by their documented names
    uses = [f"{m}:{n.lineno}" for m, p in SOURCES.items() if m not in allowed
            for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr"]
    assert not uses, uses


def test_framework_names_only_in_the_adapters():
    """No module outside interop/adapters.py names torch, jax or cupy arrays by a string (the CUDA
    backend and the NCCL engine use CuPy itself, as a library)."""
    names = {"torch", "jax", "jaxlib"}
    hits = []
    for module, path in SOURCES.items():
        if module in ("dsquant.interop.adapters", "dsquant._info"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                hits.append(f"{module}:{node.lineno} {node.value!r}")
    assert not hits, hits


def test_one_fp_format_table():
    """The minifloat formats are listed once (core/fp_formats.py); cuda/dsq_fp_formats.cuh is generated from it."""
    from dsquant.core import fp_formats
    header = PACKAGE.parent / "cuda" / "dsq_fp_formats.cuh"
    assert header.read_text() == fp_formats.cxx_header(), \
        "regenerate: python -m dsquant.core.fp_formats > cuda/dsq_fp_formats.cuh"


def test_one_dtype_table():
    """The float dtypes are listed once (core/dtypes.py); cuda/dsq_dtypes.cuh is generated from it."""
    from dsquant.core import dtypes
    header = PACKAGE.parent / "cuda" / "dsq_dtypes.cuh"
    assert header.read_text() == dtypes.cxx_header(), "regenerate: python -m dsquant.core.dtypes > cuda/dsq_dtypes.cuh"
    tuples = []
    for module, path in SOURCES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List)):
                values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if {"float16", "bfloat16", "float32", "float64"} <= set(values):
                    tuples.append(f"{module}:{node.lineno}")
    assert tuples == [], f"dtype lists outside core/dtypes.py: {tuples}"


def test_setup_installs_every_package():
    """setup.py lists its packages by hand: a package missing there is left out of every install
    (a fresh `pip install .` then fails at `import dsquant`, as dsquant.checkpoint once did)."""
    tree = ast.parse((PACKAGE.parent / "setup.py").read_text())
    [listed] = [kw.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                for kw in node.keywords if kw.arg == "packages"]
    packages = {e.value for e in listed.elts}
    assert {m for m in SOURCES if _is_package(m)} <= packages
