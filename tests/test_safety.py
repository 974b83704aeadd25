"""Loading runs no pickle and no unexpected code: checkpoints are safetensors only, the package never unpickles a
file, and the code shipped for `trust_remote_code=True` imports only torch, transformers (with huggingface_hub,
which transformers requires and whose `strict` its own configs use), the standard library and its own siblings."""

import ast
import sys

import pytest

from rm_hf import RehearsalMemoryForClickPrediction, RehearsalMemoryForQuestionAnswering
from tests.conftest import ROOT, tiny_config

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REMOTE_CODE_PACKAGES = {"torch", "transformers", "huggingface_hub"}


def python_files():
    return sorted([*(ROOT / "src" / "rm_hf").rglob("*.py"), *(ROOT / "examples").glob("*.py")])


def imported_modules(tree: ast.AST) -> list[tuple[int, str | None, list[str]]]:
    """(relative level, module, imported names) of every import statement, nested ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module, [alias.name for alias in node.names]))
    return found


def unsafe_loads(tree: ast.AST) -> list[str]:
    """`torch.load` calls without `weights_only=True`, and `numpy.load` calls with `allow_pickle=True`."""
    problems = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"):
            continue
        owner = ast.unparse(node.func.value)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if owner == "torch" and keywords.get("weights_only") != "True":
            problems.append(f"line {node.lineno}: {ast.unparse(node)}")
        if owner in ("np", "numpy") and keywords.get("allow_pickle") == "True":
            problems.append(f"line {node.lineno}: {ast.unparse(node)}")
    return problems


def test_the_scan_finds_what_it_looks_for():
    tree = ast.parse(
        "import torch, pickle\ntorch.load(f)\ntorch.load(f, weights_only=False)\nnp.load(f, allow_pickle=True)"
    )
    assert len(unsafe_loads(tree)) == 3
    assert {module for _, module, _ in imported_modules(tree)} == {"torch", "pickle"}


@pytest.mark.parametrize("path", python_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_pickle_and_no_unsafe_torch_load(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    modules = {module.split(".")[0] for level, module, names in imported_modules(tree) if level == 0 and module}
    assert modules.isdisjoint(PICKLE_MODULES), modules & PICKLE_MODULES
    assert unsafe_loads(tree) == []


@pytest.mark.parametrize(
    "model",
    [
        lambda: RehearsalMemoryForQuestionAnswering(tiny_config(id2label={0: "yes", 1: "no"}, sampler_mode="teacher")),
        lambda: RehearsalMemoryForClickPrediction(tiny_config(item_vocab_size=9, category_vocab_size=3)),
    ],
    ids=["question-answering", "click-prediction"],
)
def test_checkpoint_holds_safetensors_and_code_that_imports_only_torch_and_transformers(tmp_path, model):
    model().save_pretrained(tmp_path)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert "model.safetensors" in files
    assert [name for name in files if name.endswith(PICKLE_SUFFIXES)] == []

    shipped = {name for name in files if name.endswith(".py")}
    assert {"configuration_rehearsal_memory.py", "modeling_rehearsal_memory.py"} <= shipped
    for name in shipped:
        for level, module, names in imported_modules(ast.parse((tmp_path / name).read_text())):
            if level:  # a sibling copied next to the checkpoint: `from .x import y`
                assert level == 1 and f"{module}.py" in shipped, (name, module)
            else:
                top = module.split(".")[0]
                assert top in REMOTE_CODE_PACKAGES or top in sys.stdlib_module_names, (name, module)
