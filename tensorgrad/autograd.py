"""The engine behind Tensor.backward() and tg.grad(): the chain rule, node by node.

The graph's nodes are Functions (function.py) and leaf Tensors; a Function points to
the nodes of its inputs (its edges). Going backwards: order the nodes so that each one
comes before every node it was made from (a topological order, built with an explicit
stack, so a chain of 100,000 ops is fine); walk that order from the output, hand each
Function the sum of the gradients that flowed into its output, and add what its
backward returns into the gradients of its inputs. A gradient is dropped as soon as its
Function has used it; a leaf keeps its sum.
"""
import numpy as np

from .function import Function, enable_grad


def backpropagate(root, grad, owned, retain_graph, into_leaf, on_result=None):
    """Run the graph behind root (a Function, or a leaf Tensor) backwards from grad, the
    gradient of root's output. Each leaf's summed gradient goes to into_leaf(leaf, g, owned);
    on_result(fn, g), when given, sees each Function's summed output gradient before its
    backward does. owned: nothing but the engine holds grad (see _owned)."""
    grads = {id(root): (grad, owned)}       # node -> (summed gradient of its output, owned)
    for node in reversed(topological_order(root)):
        g, owned = grads.pop(id(node), (None, False))
        if g is None:
            continue                        # no gradient flows through this node
        if not isinstance(node, Function):
            into_leaf(node, g, owned)       # a leaf tensor keeps the sum
            continue
        if on_result is not None:
            on_result(node, g)
        in_grads = _call_backward(node, g, grads)
        for edge, meta, ig in zip(node.inputs, node.input_meta, in_grads):
            if edge is not None and ig is not None:
                _add(grads, edge, _checked(node, meta, ig), _owned(ig, in_grads, g, owned))
        if not retain_graph:
            node.__dict__.clear()           # drop the arrays it saved (and its edges)
            node.freed = True


def backpropagate_graph(root, grad, into_leaf, on_result=None):
    """backpropagate for create_graph=True: grad and every gradient are Tensors, each
    Function's backward_graph (written in tensor ops, ops/double.py) records the backward
    pass as a graph of its own, so the gradients can be differentiated again. The graph
    differentiated is kept (its nodes are part of the new one)."""
    grads = {id(root): grad}
    with enable_grad():
        for node in reversed(topological_order(root)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if not isinstance(node, Function):
                into_leaf(node, g)
                continue
            if on_result is not None:
                on_result(node, g)
            if node.freed:
                raise RuntimeError("backward: the graph was already freed by an earlier backward(); "
                                   "pass retain_graph=True to the first call to go through it twice")
            in_grads = node.backward_graph(g)
            in_grads = in_grads if isinstance(in_grads, tuple) else (in_grads,)
            for edge, meta, ig in zip(node.inputs, node.input_meta, in_grads):
                if edge is not None and ig is not None:
                    if ig.shape != meta[0] or ig.dtype != meta[1]:
                        _checked(node, meta, ig.data)       # raises, naming the op
                    prev = grads.get(id(edge))
                    grads[id(edge)] = ig if prev is None else prev + ig


def topological_order(root):
    """The nodes that lead to root, each after the nodes it was made from (iterative DFS)."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
        elif id(node) not in visited:
            visited.add(id(node))
            stack.append((node, True))
            for edge in getattr(node, "inputs", ()):    # a leaf, or a freed Function, has none
                if edge is not None and id(edge) not in visited:
                    stack.append((edge, False))
    return order


def _call_backward(fn, g, grads):
    """fn.backward(g) as a tuple, one gradient per input. The adds_into hand-off: a Function
    that adds one input's gradient from the graph's other uses into its own result
    (Function.adds_into: LayerNorm's input, where a residual stream's skip connection meets
    its branch; Embedding's weight, tied to the LM head) gets that gradient out of `grads` as
    acc: one pass over it fewer."""
    if fn.freed:
        raise RuntimeError("backward: the graph was already freed by an earlier backward(); "
                           "pass retain_graph=True to the first call to go through it twice")
    k, acc = fn.adds_into, None
    if k is not None and fn.needs_input_grad[k] and fn.inputs[k] is not None:
        held = grads.get(id(fn.inputs[k]))
        if held is not None and (held[1] or not fn.adds_in_place):   # in place: only into the engine's own
            acc = grads.pop(id(fn.inputs[k]))[0]
    out = fn.backward(g) if acc is None else fn.backward(g, acc=acc)
    return out if isinstance(out, tuple) else (out,)


def _owned(ig, in_grads, g, g_owned):
    """Does the engine alone hold ig, a gradient fn.backward(g) returned? Then a leaf may keep
    ig itself instead of a copy (a GPT step's weight gradients, mostly). A backward returns
    new arrays, views, or g itself (it never returns an array it keeps): so ig is the
    engine's own when it is no view, goes to this one input only, and is not g, unless g was."""
    if getattr(ig, "base", None) is not None or len(in_grads) > 1 and [x is ig for x in in_grads].count(True) > 1:
        return False
    return g_owned or ig is not g


def _add(grads, edge, ig, owned):
    """Add ig into the gradient of edge. The first is kept as it is; a later one is added in
    place into whichever of the two the engine owns (a + b and b + a are the same bits, and no
    new array is made), else into a new sum. In place on NumPy arrays only: on the GPU (CUDA
    graphs, the memory pool) it has not been measured yet."""
    prev = grads.get(id(edge))
    if prev is None:
        grads[id(edge)] = (ig, owned)
    elif ig.ndim == 0 or not isinstance(ig, np.ndarray):
        grads[id(edge)] = (prev[0] + ig, True)
    elif prev[1]:
        total = prev[0]
        total += ig                         # same shape and dtype: both are the input's (_checked)
    elif owned:
        ig += prev[0]
        grads[id(edge)] = (ig, True)
    else:
        grads[id(edge)] = (prev[0] + ig, True)


def _checked(fn, meta, ig):
    """ig as an array of its input's shape and dtype (meta), or an error naming fn."""
    if isinstance(ig, np.generic):
        ig = np.asarray(ig)
    if ig.shape != meta[0] or ig.dtype != meta[1]:
        raise RuntimeError(f"internal error: {type(fn).__name__}.backward returned a gradient of "
                           f"shape {ig.shape} {ig.dtype} for an input of shape {meta[0]} {meta[1]}")
    return ig
