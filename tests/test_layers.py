"""The package's layers only point down, and no modules import each other in a cycle.

Read from the source (every import, those inside functions included), so a lazy import that
reaches up or closes a loop fails here just like a top-level one. Imports under
``if TYPE_CHECKING:`` never run: they count for layering, not for cycles.
"""

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "mma_agent": "mma_agent",
    "mma_agent/data": "mma_agent.data",
    "mma_agent/models": "mma_agent.models",
    "mma_agent/llm": "mma_agent.llm",
    "mma_agent/cli": "mma_agent.cli",
    "toolkits": "mma_agent.toolkits",
    "graphs": "mma_agent.graphs",
    "training": "mma_agent.training",
    "evals": "mma_agent.evals",
}
# The layer order, bottom up. The foundation is the top-level modules (util, config, modalities,
# metrics, workspace, ...); the application (the package's public face, the pipeline and the CLI)
# may use every layer. A module may import its own layer or any below it, never one above.
LAYER_ORDER = [
    ("foundation", ("mma_agent",)),
    ("data", ("mma_agent.data",)),
    ("models and LLM backends", ("mma_agent.models", "mma_agent.llm")),
    ("toolkits", ("mma_agent.toolkits",)),
    ("graphs", ("mma_agent.graphs",)),
    ("training", ("mma_agent.training",)),
    ("evals", ("mma_agent.evals",)),
    ("application", ("mma_agent.pipeline", "mma_agent.cli", "mma_agent.__init__")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in FOLDERS.items():
        for f in sorted((ROOT / folder).glob("*.py")):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def _package_of(name: str, path: Path) -> str:
    """The package a module's relative imports start from."""
    return name if path.stem == "__init__" else name.rsplit(".", 1)[0]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return skip


def import_graph(*, with_type_checking: bool) -> nx.DiGraph:
    mods = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = set() if with_type_checking else _type_checking_nodes(tree)
        package = _package_of(name, path)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            g.add_edges_from((name, t) for t in targets if t in mods and t != name)
    return g


def layer(module: str) -> int:
    """The index in LAYER_ORDER of the longest prefix that names the module's layer."""
    if module == "mma_agent":
        module = "mma_agent.__init__"
    best, depth = 0, 0
    for i, (_, prefixes) in enumerate(LAYER_ORDER):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") + 1 > depth:
                best, depth = i, prefix.count(".") + 1
    return best


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(import_graph(with_type_checking=False)))
    assert cycles == [], f"import cycles: {cycles}"


def test_layers_only_point_down():
    up = sorted((a, b) for a, b in import_graph(with_type_checking=True).edges if layer(b) > layer(a))
    order = " < ".join(name for name, _ in LAYER_ORDER)
    assert up == [], f"imports of a higher layer ({order}): {up}"


def test_the_graph_sees_the_imports():
    """The checks above can fail: the reader finds known edges, lazy ones included."""
    g = import_graph(with_type_checking=True)
    assert g.has_edge("mma_agent.graphs.reranker", "mma_agent.graphs.nodes")  # top level
    assert g.has_edge("mma_agent.pipeline", "mma_agent.toolkits")  # inside a method
    assert g.has_edge("mma_agent.data.masks", "mma_agent.data.splits")  # under TYPE_CHECKING
    assert not import_graph(with_type_checking=False).has_edge("mma_agent.data.masks", "mma_agent.data.splits")
    assert g.has_edge("mma_agent.cli.train", "mma_agent.cli.common")
    chain = [
        "mma_agent.util",
        "mma_agent.data.splits",
        "mma_agent.models.retrievers",
        "mma_agent.toolkits.base",
        "mma_agent.graphs.nodes",
        "mma_agent.training.sft",
        "mma_agent.evals.runner",
        "mma_agent.cli.train",
    ]
    assert [layer(m) for m in chain] == sorted({layer(m) for m in chain})
    assert layer("mma_agent.llm.local") == layer("mma_agent.models.relevance") and layer("mma_agent") == layer(
        "mma_agent.pipeline"
    )


def test_no_cycles_even_through_type_checking_imports():
    """The package has no circle at all, not even one that only type checkers walk."""
    cycles = list(nx.simple_cycles(import_graph(with_type_checking=True)))
    assert cycles == [], f"import cycles (TYPE_CHECKING imports included): {cycles}"


def test_nothing_below_the_application_takes_the_application_object():
    """Training and evaluation take a `Workspace` (a protocol at the toolkits layer), never an
    untyped `pipeline` that the import graph cannot see."""
    app = {name for name in _modules() if layer(name) == len(LAYER_ORDER) - 1}
    bad = []
    for name, path in _modules().items():
        if name in app:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                    kind = ast.unparse(arg.annotation) if arg.annotation else None
                    if arg.arg == "pipeline" and kind != "Workspace" or kind == "Pipeline":
                        bad.append(f"{name}.{node.name}({arg.arg}: {kind})")
    assert bad == [], f"functions below the application that take its object: {bad}"
