"""READING.md, the reading guide: every file it names exists, and it names every source file.

Paths are parsed from the markdown: inline code (`tensorgrad/tensor.py`) and link
targets ([text](docs/layernorm.md)) that look like repository paths.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a file with a source or text extension, or a folder written with its trailing slash
_PATH = re.compile(r"^[\w.-]+(/[\w.-]+)*\.(py|cu|cuh|md|sh|cfg|toml|txt|json)$|^[\w.-]+(/[\w.-]+)*/$")


def named_paths(markdown):
    """Repository paths in a markdown text: inline code spans and relative link targets."""
    candidates = re.findall(r"`([^`\s]+)`", markdown) + re.findall(r"\]\(([^)\s#]+)\)", markdown)
    return sorted({c for c in candidates if _PATH.match(c) and "://" not in c})


def test_path_parser_finds_code_spans_and_links():
    text = ("see `tensorgrad/tensor.py`, [the doc](docs/layernorm.md), `x.sum()`, `a @ b`, `dL/dx`, "
            "[web](https://x.org/a.md)")
    assert named_paths(text) == ["docs/layernorm.md", "tensorgrad/tensor.py"]


def test_every_path_in_the_reading_guide_exists():
    paths = named_paths((ROOT / "READING.md").read_text())
    assert len(paths) > 50, f"only {len(paths)} paths parsed from READING.md: the parser is broken"
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"READING.md names files that do not exist: {missing}"


def test_docs_it_points_to_name_existing_files():
    for doc in named_paths((ROOT / "READING.md").read_text()):
        if doc.startswith("docs/"):
            missing = [p for p in named_paths((ROOT / doc).read_text()) if not (ROOT / p).exists()]
            assert not missing, f"{doc} names files that do not exist: {missing}"


def test_every_source_file_is_in_the_reading_guide():
    named = set(named_paths((ROOT / "READING.md").read_text()))
    sources = [p.relative_to(ROOT).as_posix() for folder in ("tensorgrad", "nn", "gpt", "tokenizer")
               for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".cu", ".cuh")]
    left_out = sorted(p for p in sources if p not in named and not p.endswith("/__init__.py"))
    assert not left_out, f"READING.md leaves out {left_out}: give each a line in the path"


def test_readme_links_the_reading_guide():
    assert "(READING.md)" in (ROOT / "README.md").read_text()


# What runs for `a * b` and `backward()`: READING.md's Part 1 names these pieces as the first read.
FIRST_READ = {"tensorgrad/function.py": ["Function.apply"],
              "tensorgrad/ops/elementwise.py": ["Mul", "mul"],
              "tensorgrad/tensor.py": ["Tensor.backward", "_keep_sum"],
              "tensorgrad/autograd.py": ["backpropagate", "topological_order", "_add"],
              "tensorgrad/ops/broadcast.py": ["sum_to", "unbroadcast", "meta"]}


def _piece_lines(path, name):
    """The source lines of a top-level function or class, or of Class.method, in path."""
    import ast
    body = ast.parse((ROOT / path).read_text()).body
    outer, _, inner = name.partition(".")
    node = next(n for n in body if getattr(n, "name", None) == outer)
    if inner:
        node = next(n for n in node.body if getattr(n, "name", None) == inner)
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    return (ROOT / path).read_text().splitlines()[start - 1:node.end_lineno]


def test_the_first_read_of_the_engine_is_short_and_plain():
    part1 = (ROOT / "READING.md").read_text().split("## Part 1.")[1].split("## Part 2.")[0]
    lines = []
    for path, names in FIRST_READ.items():
        assert f"`{path}`" in part1
        for name in names:
            assert f"`{name}`" in part1, f"READING.md's Part 1 does not name {name} ({path})"
            lines += _piece_lines(path, name)
    assert len(lines) <= 150, f"the first read of the engine is {len(lines)} lines"
    code = "\n".join(lines)
    for trick in ("kernels", "getrefcount", "twin", "adds_into", "BLAS", "out="):
        assert trick not in code, f"a speed trick ({trick}) in the first read"


def test_the_engine_reads_no_reference_counts_and_imports_no_kernels():
    for path in ("tensorgrad/function.py", "tensorgrad/tensor.py", "tensorgrad/autograd.py"):
        text = (ROOT / path).read_text()
        assert "getrefcount" not in text and "import kernels" not in text and "kernels import" not in text, path
    loop = _piece_lines("tensorgrad/autograd.py", "backpropagate")
    assert len(loop) <= 30, f"the backward loop is {len(loop)} lines"
