"""tg.draw_graph: the graph behind a tensor as Graphviz DOT, as text, and rendered."""
import re
import sys
import types

import numpy as np
import pytest

import tensorgrad as tg


def small_graph():
    x = tg.tensor(np.ones((2, 3)))                                   # data: no gradient
    W = tg.randn(3, 4, requires_grad=True)
    b = tg.zeros(4, requires_grad=True)
    return ((x @ W + b).tanh() ** 2).mean(), W, b


def test_dot_names_ops_shapes_dtypes_and_what_requires_grad():
    loss, W, b = small_graph()
    dot = tg.draw_graph(loss, names={"W": W, "b": b})
    assert dot.startswith("digraph tensorgrad {") and dot.rstrip().endswith("}")
    for op, shape in [("Mean", "()"), ("Pow", "(2, 4)"), ("Tanh", "(2, 4)"), ("Add", "(2, 4)"), ("MatMul", "(2, 4)")]:
        assert f'label="{op}\\n-> {shape} float32"' in dot
    assert 'label="W\\n(3, 4) float32\\nrequires grad"' in dot
    assert 'label="b\\n(4,) float32\\nrequires grad"' in dot
    assert 'label="input 0\\n(2, 3) float32\\nno grad"' in dot      # x, which MatMul took
    nodes = re.findall(r"^  (n\d+) \[", dot, re.M)
    edges = re.findall(r"^  (n\d+) -> (n\d+);", dot, re.M)
    assert len(nodes) == 8 and len(edges) == 7                     # a tree: one arrow into each but the output
    assert {a for e in edges for a in e} <= set(nodes)


def test_text_form_is_a_tree_and_names_a_shared_node_once():
    W = tg.tensor(np.ones((2, 2)), requires_grad=True)
    y = W * W
    text = tg.draw_graph(y.sum() + y.mean(), format="text", names={"W": W})
    assert text.splitlines() == [
        "Add -> () float32",
        "├── Sum -> () float32",
        "│   └── Mul -> (2, 2) float32",
        "│       ├── W (2, 2) float32, requires grad",
        "│       └── W (2, 2) float32, requires grad",
        "└── Mean -> () float32",
        "    └── Mul -> (2, 2) float32 (as above)"]
    assert tg.draw_graph(W, format="text", names={"W": W}) == "W (2, 2) float32, requires grad"


def test_a_long_chain_needs_no_recursion_and_a_freed_graph_is_a_clear_error():
    x = tg.tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0
    assert tg.draw_graph(y, format="text").count("Mul") == 5000
    y.sum().backward()
    with pytest.raises(RuntimeError, match="freed this graph; draw it before"):
        tg.draw_graph(y)


def test_rendering_needs_graphviz_and_says_so_in_one_line(monkeypatch, tmp_path):
    loss, _, _ = small_graph()
    monkeypatch.setitem(sys.modules, "graphviz", None)                # as if not installed
    with pytest.raises(RuntimeError) as e:
        tg.draw_graph(loss, format="svg")
    assert "pip install -e .[graph]" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="format must be"):
        tg.draw_graph(loss, format="jpeg")

    rendered = []

    class Source:                                                   # graphviz's API, as far as it is used
        def __init__(self, dot):
            self.dot = dot

        def pipe(self, format):  # noqa: A002
            rendered.append((self.dot, format))
            return b"<svg/>"
    fake = types.SimpleNamespace(Source=Source, ExecutableNotFound=RuntimeError)
    monkeypatch.setitem(sys.modules, "graphviz", fake)
    assert tg.draw_graph(loss, format="png") == b"<svg/>"
    path = tmp_path / "graph.svg"
    assert tg.draw_graph(loss, str(path)) == str(path) and path.read_bytes() == b"<svg/>"   # format from the suffix
    assert rendered[-1] == (tg.draw_graph(loss), "svg")
    tg.draw_graph(loss, tmp_path / "graph.dot")
    assert (tmp_path / "graph.dot").read_text() == tg.draw_graph(loss)
