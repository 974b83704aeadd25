"""The README's usage snippets run as written, and .ci/run calls the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_usage_snippets_run():
    snippets = [block for block in python_blocks() if "RehearsalMemoryForQuestionAnswering(config)" in block]
    assert len(snippets) == 2  # the slot memory and the memory types
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make test\b", readme, flags=re.M)
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), flags=re.M)
