"""The evaluation package sits in no import circle: the evaluate stage, the benchmark readers and `predict` import
it, and it imports none of them (nor any stage). Checked twice: on the import graph of the source (every import
statement, the ones inside functions too, so a lazy circle counts), and by importing each module first in a fresh
interpreter, then all the others."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVALUATION = sorted(f"pipeline.evaluation.{p.stem}" for p in (ROOT / "pipeline" / "evaluation").glob("*.py")
                    if p.stem != "__init__") + ["pipeline.evaluation"]
USERS = ["pipeline.benchmarks", "pipeline.predict", "pipeline.stages.evaluate", "pipeline.stages.visualize"]


def modules() -> dict[str, Path]:
    out = {}
    for p in (ROOT / "pipeline").rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the pipeline modules it imports anywhere in its source}."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                prefix = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:  # `from .x import name`: the module x
                    t = t.rpartition(".")[0]
                if t.startswith("pipeline") and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_source_graph_has_no_circle_through_evaluation_benchmarks_or_predict():
    graph = import_graph()
    assert set(EVALUATION) <= set(graph) and set(USERS) <= set(graph)
    assert "pipeline.evaluation.embedder" in graph["pipeline.predict"]  # the graph sees what predict imports
    watched = set(EVALUATION) | set(USERS)
    assert [c for c in cycles(graph) if watched & set(c)] == []
    for name in EVALUATION:  # the package names no stage and none of its users, lazily or not
        assert not {m for m in graph[name] if m.startswith("pipeline.stages") or m in USERS}, name
        assert not set(USERS) & reachable(graph, name), name


def test_importing_the_package_loads_no_stage():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in EVALUATION)
            + "print(sorted(m for m in sys.modules if m.startswith('pipeline.stages') or m in "
            + repr(tuple(USERS)) + "))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


ORDERS = """
import importlib, json, random, sys
modules = json.loads(sys.argv[1])
orders = [[m] + [x for x in modules if x != m] for m in modules] + [modules[::-1]]
rng = random.Random(0)
orders += [rng.sample(modules, len(modules)) for _ in range(20)]
failed = {}
for order in orders:
    for name in [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]:
        del sys.modules[name]  # pipeline afresh (torch and the other libraries stay: they are not under test)
    try:
        for m in order:
            importlib.import_module(m)
    except Exception as e:
        failed[" ".join(order)] = repr(e)
print(json.dumps({"orders": len(orders), "failed": failed}))
"""


def test_every_module_imports_first_and_in_shuffled_orders():
    """Each module entered first (a circle fails only from some entry points), then all the others; the reverse
    order; 20 shuffled orders. One fresh interpreter, every pipeline module dropped from sys.modules between
    orders."""
    import json

    everything = EVALUATION + USERS
    run = subprocess.run([sys.executable, "-c", ORDERS, json.dumps(everything)], capture_output=True, text=True,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"orders": len(everything) + 21, "failed": {}}
