"""The package's shape, held by tests: how the base is held is decided in one module, and no
function grows into a whole procedure again (issue 12)."""

import ast
from pathlib import Path

import pytest

from whisper_tune.quantization import HOLDINGS

SRC = Path(__file__).parents[1] / "src" / "whisper_tune"
MAX_FUNCTION_LINES = 80  # a long procedure becomes named steps (see training.TrainingRun)


def _modules():
    return sorted(SRC.rglob("*.py"))


def test_quantization_names_are_decided_in_one_place():
    """No comparison with a holding's name (``q == "int8"``, ``q in ("int8", "nf4")``) outside
    the modules that define and validate the holdings: everything else asks the Holding.
    (The same words in other vocabularies, PEFT's ``bias="none"`` or CTranslate2's ``int8``
    compute type, are not comparisons of a holding.)"""
    allowed = {"quantization.py", "config.py"}
    found = []
    for path in _modules():
        if path.name in allowed:
            continue
        for compare in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(compare, ast.Compare):
                continue
            for node in ast.walk(compare):
                if isinstance(node, ast.Constant) and node.value in HOLDINGS:
                    found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert not found, found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_function_is_a_whole_procedure(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long
