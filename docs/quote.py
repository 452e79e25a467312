"""Keep the code quoted in docs/*.md equal to the code itself.

A quote in a document names what it quotes, not a copy's lines:

    <!-- quote: tensorgrad/ops/nn.py LayerNorm.backward -->
    ```python
    ...the source of LayerNorm.backward, as it is now...
    ```

    python docs/quote.py           # rewrite every quote from the current source
    python docs/quote.py --check   # exit status 1 and the stale quotes named (tests/test_docs.py checks the same)

The name is a function or class of that file, dotted for methods; its source is
found by parsing the file, so the quote follows it wherever it moves in the file.
"""
import argparse
import ast
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUOTE = re.compile(r"(<!-- quote: (\S+) (\S+) -->\n```python\n)(.*?)(```)", re.S)


def source_of(path, dotted):
    """The dedented source of the function or class `dotted` (A.b for a method) in path."""
    text = (ROOT / path).read_text()
    nodes = ast.parse(text).body
    node = None
    for name in dotted.split("."):
        node = next((n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == name), None)
        if node is None:
            raise LookupError(f"{path} has no {dotted}: point the quote at where it lives now")
        nodes = node.body
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return textwrap.dedent("\n".join(text.splitlines()[first - 1:node.end_lineno])) + "\n"


def refreshed(doc_text):
    """doc_text with every quote replaced by the current source; and [(path, name)] that changed."""
    stale = []

    def fill(m):
        code = source_of(m.group(2), m.group(3))
        if code != m.group(4):
            stale.append((m.group(2), m.group(3)))
        return m.group(1) + code + m.group(5)
    return QUOTE.sub(fill, doc_text), stale


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only report stale quotes (exit status 1 if any)")
    args = p.parse_args(argv)
    status = 0
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text, stale = refreshed(doc.read_text())
        for path, name in stale:
            print(f"{doc.relative_to(ROOT)} quotes {path} {name}, which has changed: run python docs/quote.py, "
                  f"then re-read the prose around the quote", file=sys.stderr)
        if stale and args.check:
            status = 1
        elif stale:
            doc.write_text(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
