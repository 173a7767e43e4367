"""The examples in docstrings run and print what they say."""
import doctest
import importlib
from pathlib import Path

import pytest

MODULES = ["dsquant.ops.fake", "dsquant.ops.fp",
           "dsquant.ops.integer", "dsquant.ops.zeropp", "dsquant._info", "dsquant.compat.deepspeed",
           "dsquant.compat.deepspeed_fp", "dsquant.ops.fp_ds",
           "dsquant.torch", "dsquant.jax",
           "dsquant.bench.integer", "dsquant.bench.zeropp", "dsquant.bench.fp", "dsquant.checkpoint.files"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# pages whose >>> examples are exact (quickstart's are illustrative)
DOCS = ["api.md", "format.md", "fp.md", "deepspeed_fp.md", "grouping.md"]


@pytest.mark.parametrize("name", DOCS)
def test_markdown_examples(name):
    """The `>>>` examples of these docs pages run and print what they say (code fences removed, so
    a closing fence does not count as expected output)."""
    path = Path(__file__).parent.parent / "docs" / name
    text = "\n".join("" if line.startswith("```") else line for line in path.read_text().splitlines())
    test = doctest.DocTestParser().get_doctest(text, {}, path.name, str(path), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0
