"""The layout rules of docs/architecture.md that a linter does not check:
server.py stays small, and a long function says why it is long."""

import ast
import pathlib

import coda_ws

PACKAGE = pathlib.Path(coda_ws.__file__).parent
MAX_FUNCTION_LINES = 60


def _functions(path: pathlib.Path) -> list[tuple[str, int, int, list[str]]]:
    source = path.read_text(encoding="utf-8")
    lines = source.split("\n")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            end = node.end_lineno or node.lineno
            found.append((node.name, node.lineno, end - node.lineno + 1, lines[node.lineno - 1 : end]))
    return found


def test_no_function_is_long_without_a_comment_saying_why():
    """A function over 60 lines carries a ``# Long:`` comment with the reason
    (a docstring that documents a contract, a flat list of declarations, steps
    that must stay in one order); anything else is split."""
    unexplained = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name} ({length} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, line, length, body in _functions(path)
        if length > MAX_FUNCTION_LINES and not any(text.strip().startswith("# Long:") for text in body)
    ]
    assert not unexplained, "split these, or say why they are long in a '# Long:' comment:\n" + "\n".join(
        unexplained
    )


def test_the_rule_sees_a_long_function(tmp_path):
    """The check above finds a long function and its comment (it is not vacuous)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (tmp_path / "m.py").write_text(f"def f():\n    # Long: a test\n{body}\n\ndef g():\n{body}\n")
    found = {
        name: (length, any(t.strip().startswith("# Long:") for t in text))
        for name, _, length, text in _functions(tmp_path / "m.py")
    }
    assert found == {"f": (72, True), "g": (71, False)}


def test_server_module_stays_under_500_lines():
    """server.py composes the parts; the parts live in their own modules."""
    lines = (PACKAGE / "server.py").read_text(encoding="utf-8").count("\n")
    assert lines < 500, f"server.py has {lines} lines: move a concern into its own module"
