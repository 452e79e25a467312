"""The code quoted in docs/*.md is the code as it is (docs/quote.py)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_quote_the_code_as_it_is():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import quote
    finally:
        sys.path.remove(str(ROOT / "docs"))
    text = (ROOT / "docs" / "layernorm.md").read_text()
    assert len(quote.QUOTE.findall(text)) >= 2
    _, stale = quote.refreshed(text)
    assert not stale, f"docs/layernorm.md quotes {stale}, which changed: run python docs/quote.py"
