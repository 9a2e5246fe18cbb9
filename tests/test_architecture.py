"""The package's shape, held by tests: how the base is held is decided in one module, no
function grows into a whole procedure again (issue 12), imports run one way down the
README's Layout and one module picks the decoding back-end (issue 26)."""

import ast
import re
import sys
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


# ---- layers (issue 26): imports run one way, in the order README.md's Layout lists ------

README = Path(__file__).parents[1] / "README.md"
_LAYOUT_LINE = re.compile(r"^  (\S+\.py)\s")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every whisper_tune module ``path`` imports: at the top, inside functions and under
    ``TYPE_CHECKING`` alike (a type-only import is still an arrow a reader follows)."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _modules()}
    graph = {}
    for name, path in modules.items():
        deps = {d for d in _imports(path) if d in modules and d != name}
        graph[name] = {d for d in deps if not name.startswith(d + ".")}  # a package's own __init__ is not a layer
    return graph


def _layout_order() -> list[str]:
    """The modules of README.md's Layout section, top down, as dotted names."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Layout") :]
    section = section[: section.index("\n## ")] if "\n## " in section else section
    order = []
    for line in section.splitlines():
        match = _LAYOUT_LINE.match(line)
        if match:
            order.append(_module_name(SRC / match.group(1)))
    return order


def test_readme_layout_lists_every_module_once():
    order = _layout_order()
    assert len(order) == len(set(order)), [m for m in order if order.count(m) > 1]
    assert sorted(order) == sorted(_graph()), set(order) ^ set(_graph())


def test_imports_only_go_down_the_layout():
    """Each module imports only modules the README lists below it: the package has no
    import cycle, type-only imports included, and a reader can follow any arrow downward."""
    position = {m: i for i, m in enumerate(_layout_order())}
    upward = [
        f"{module} imports {dep}"
        for module, deps in _graph().items()
        for dep in sorted(deps)
        if position[dep] <= position[module]
    ]
    assert not upward, upward


def test_the_graph_check_sees_cycles_and_type_only_imports(tmp_path, monkeypatch):
    """The scan behind the two tests above finds a type-only import and an import inside a function."""
    pkg = tmp_path / "whisper_tune"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    graph = _graph()
    assert graph["whisper_tune.a"] == {"whisper_tune.b"} and graph["whisper_tune.b"] == {"whisper_tune.a"}


def test_one_place_chooses_a_decoding_back_end():
    """Only inference/engine.py decides between the fast decoder, generate, faster-whisper and
    whisper.cpp: no other module asks whether the fast path applies or opens a runtime."""
    choosers = ("supports_fast_path(", "is_ct2_model(", "load_ct2(", "greedy_texts_ggml(", "transcribe_batched(")
    allowed = {"engine.py", "greedy.py", "ct2.py", "ggml.py", "longform.py"}  # the chooser, and where each is defined
    found = [
        f"{path.relative_to(SRC)}: {call}"
        for path in _modules()
        if path.name not in allowed
        for call in choosers
        if call in path.read_text(encoding="utf-8")
    ]
    assert not found, found
