"""The project's four packages (tensorgrad, nn, gpt, tokenizer) share their names with other
PyPI distributions. Where another package of one of those names is installed ahead of
ours, our imports would fail deep inside (`cannot import name 'CharTokenizer' from
'tokenizer'`): say so up front, in one line per package, with what to do.

`import tensorgrad` checks its siblings; nn checks tensorgrad itself (nn/__init__.py).
"""
import importlib.util
import os
import sys

SIBLINGS = ("tensorgrad", "nn", "gpt", "tokenizer")
_warned = set()


def foreign(root=None):
    """[(name, where it is found)] for each sibling that exists beside this package (root)
    but is imported from somewhere else."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = []
    for name in SIBLINGS:
        ours = os.path.join(root, name, "__init__.py")
        if not os.path.isfile(ours):
            continue                     # installed apart from us: nothing to compare with
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else None
        if module is None:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                continue
            origin = spec.origin if spec is not None else None
        if origin and os.path.realpath(origin) != os.path.realpath(ours):
            found.append((name, origin))
    return found


def message(name, origin, ours):
    return (f"warning: `import {name}` finds {origin}, not this project's {name} ({ours}): another "
            f"package named {name} is installed ahead of it; pip uninstall it, or install tensorgrad in a "
            f"fresh virtual environment (README)")


def warn(root=None):
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, origin in foreign(root):
        if name not in _warned:
            _warned.add(name)
            print(message(name, origin, os.path.join(root, name)), file=sys.stderr)
