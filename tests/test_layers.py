"""The package's layers only point down, and no modules import each other in a cycle.

Read from the source (every import, those inside functions included), so a lazy import that
reaches up or closes a loop fails here just like a top-level one. Imports under
``if TYPE_CHECKING:`` never run: they count for layering, not for cycles.
"""

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"mma_agent": "mma_agent", "toolkits": "mma_agent.toolkits", "graphs": "mma_agent.graphs", "training": "mma_agent.training", "evals": "mma_agent.evals"}
APP = {"mma_agent", "mma_agent.pipeline", "mma_agent.cli", "mma_agent.serve"}  # orchestration: may use every layer
LAYERS = {"mma_agent": 0, "mma_agent.toolkits": 1, "mma_agent.graphs": 2, "mma_agent.training": 3, "mma_agent.evals": 4}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in FOLDERS.items():
        for f in sorted((ROOT / folder).glob("*.py")):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


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
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
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
    if module in APP:
        return 5
    return LAYERS.get(".".join(module.split(".")[:2]), 0)


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(import_graph(with_type_checking=False)))
    assert cycles == [], f"import cycles: {cycles}"


def test_layers_only_point_down():
    up = sorted((a, b) for a, b in import_graph(with_type_checking=True).edges if layer(b) > layer(a))
    assert up == [], f"imports of a higher layer (core < toolkits < graphs < training < evals < pipeline/cli): {up}"


def test_the_graph_sees_the_imports():
    """The checks above can fail: the reader finds known edges, lazy ones included."""
    g = import_graph(with_type_checking=True)
    assert g.has_edge("mma_agent.graphs.reranker", "mma_agent.graphs.nodes")  # top level
    assert g.has_edge("mma_agent.pipeline", "mma_agent.toolkits")  # inside a method
    assert g.has_edge("mma_agent.masks", "mma_agent.splits")  # under TYPE_CHECKING
    assert not import_graph(with_type_checking=False).has_edge("mma_agent.masks", "mma_agent.splits")
    assert layer("mma_agent.util") < layer("mma_agent.toolkits.base") < layer("mma_agent.graphs.nodes") < layer("mma_agent.evals.runner") < layer("mma_agent.cli")
