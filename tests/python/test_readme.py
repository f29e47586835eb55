"""The README's notebook example runs as written (a notebook user copies it first) and prints what
the README says it prints: every ```python block is followed by a ```text block of its output."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = re.compile(r"```python\n(?P<code>.*?)```\n(?:(?!```).)*?```text\n(?P<printed>.*?)```", re.S)


def test_readme_python_examples_print_what_the_readme_shows():
    text = README.read_text()
    examples = list(EXAMPLE.finditer(text))
    assert examples, "README.md has no python example"
    assert len(examples) == text.count("```python"), "a python block without its ```text output"
    for example in examples:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(example["code"], str(README), "exec"), {})
        assert printed.getvalue() == example["printed"]
