"""A picture of the graph behind a tensor: Graphviz DOT, a rendered SVG/PNG, or text.

    loss = ((x @ W + b).tanh() ** 2).mean()
    print(tg.draw_graph(loss, format="text"))                   # in the terminal
    tg.draw_graph(loss, "graph.svg", names={"W": W, "b": b})     # a picture (needs Graphviz)

Boxes are leaf tensors (blue when they require grad, grey when they do not: those
are shown where an op took them, as its input i); ellipses are the Functions that
backward() will visit, each with the shape and dtype of what it made. Arrows point the way the forward pass went. Draw
before backward(), which frees the graph (or pass retain_graph=True to it).
DOT and text need nothing; SVG and PNG need the `graphviz` package and Graphviz's
`dot` program (`pip install -e .[graph]` and e.g. `apt install graphviz`).
"""
from .function import Function

_LEAF = 'shape=box, style=filled, fillcolor="#dbe9f6"'
_CONST = 'shape=box, style="filled,dashed", fillcolor="#eeeeee"'
_OP = 'shape=ellipse'


def draw_graph(tensor, path=None, format=None, names=None):  # noqa: A002 (graphviz's word)
    """The graph behind tensor as format 'dot' (Graphviz source), 'text' (an indented tree),
    'svg' or 'png' (rendered by Graphviz). format defaults to path's suffix (.svg, .png, .dot,
    .txt), else 'dot'. With path, the result is written there and path is returned; without,
    it is returned (a str, or bytes for svg and png). names: {name: tensor} labels leaves."""
    if format is None:
        suffix = str(path).rsplit(".", 1)[-1].lower() if path is not None else "dot"
        format = {"gv": "dot", "txt": "text"}.get(suffix, suffix)
    if format not in ("dot", "text", "svg", "png"):
        raise ValueError(f"draw_graph: format must be 'dot', 'text', 'svg' or 'png', got {format!r}")
    nodes = _collect(tensor, {id(t): n for n, t in (names or {}).items()})
    out = _text(nodes, tensor) if format == "text" else _dot(nodes)
    if format in ("svg", "png"):
        out = _render(out, format)
    if path is None:
        return out
    with open(path, "wb") as f:
        f.write(out if isinstance(out, bytes) else out.encode())
    return path


def _describe(shape, dtype):
    return f"{tuple(shape)} {dtype}"


def _collect(tensor, names):
    """{id: (label, style, [input ids])} of every node behind tensor, from the output down
    (an explicit stack: a chain of 100,000 ops is fine)."""
    root = tensor._ctx or tensor
    if isinstance(root, Function) and root.freed:
        raise RuntimeError("draw_graph: backward() has freed this graph; draw it before, "
                           "or call backward(retain_graph=True)")
    made = {id(root): _describe(tensor.shape, tensor.dtype)}   # what each Function output looks like
    nodes, stack = {}, [root]
    while stack:
        node = stack.pop()
        if id(node) in nodes:
            continue
        if not isinstance(node, Function):                       # a leaf tensor
            name = names.get(id(node), "leaf")
            grad = "requires grad" if node.requires_grad else "no grad"
            nodes[id(node)] = (f"{name}\n{_describe(node.shape, node.dtype)}\n{grad}",
                               _LEAF if node.requires_grad else _CONST, [])
            continue
        inputs = []                                              # filled below
        nodes[id(node)] = (f"{type(node).__name__}\n-> {made[id(node)]}", _OP, inputs)
        for i, (edge, meta) in enumerate(zip(node.inputs, node.input_meta)):
            if edge is not None:
                made.setdefault(id(edge), _describe(*meta))
                inputs.append(id(edge))
                stack.append(edge)
            elif meta is not None:                               # a tensor that needs no gradient
                const = f"{id(node)}_{i}"
                nodes[const] = (f"input {i}\n{_describe(*meta)}\nno grad", _CONST, [])
                inputs.append(const)
    return nodes


def _dot(nodes):
    lines = ["digraph tensorgrad {", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=11];']
    short = {key: f"n{i}" for i, key in enumerate(nodes)}         # n0 is the output's node
    for key, (label, style, inputs) in nodes.items():
        label = label.replace('"', r'\"').replace("\n", r"\n")
        lines.append(f'  {short[key]} [label="{label}", {style}];')
        lines += [f"  {short[src]} -> {short[key]};" for src in inputs]
    return "\n".join(lines) + "\n}\n"


def _text(nodes, tensor):
    """The graph as a tree from the output down; a node met again is named, not repeated."""
    root = id(tensor._ctx or tensor)
    lines, seen, stack = [], set(), [(root, "", "")]
    while stack:
        key, lead, child_lead = stack.pop()
        label, _, inputs = nodes[key]
        first, *rest = label.split("\n")
        again = key in seen
        lines.append(f"{lead}{first} {', '.join(rest)}" + (" (as above)" if again and inputs else ""))
        if again:
            continue
        seen.add(key)
        kids = list(reversed(inputs))                             # popped in input order
        for n, kid in enumerate(kids):
            last = n == 0
            stack.append((kid, child_lead + ("└── " if last else "├── "), child_lead + ("    " if last else "│   ")))
    return "\n".join(lines)


def _render(dot, format):  # noqa: A002
    try:
        import graphviz
    except ImportError:
        raise RuntimeError(f"draw_graph: format={format!r} needs the graphviz package and Graphviz's dot "
                           "program (pip install -e .[graph], and e.g. apt install graphviz); "
                           "format='dot' or 'text' need neither") from None
    try:
        data = graphviz.Source(dot).pipe(format=format)
    except graphviz.ExecutableNotFound:
        raise RuntimeError(f"draw_graph: format={format!r} needs Graphviz's dot program on the PATH "
                           "(e.g. apt install graphviz, brew install graphviz); format='dot' or 'text' "
                           "need no program") from None
    return data
