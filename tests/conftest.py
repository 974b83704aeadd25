"""Shared fixtures: tiny configs so the whole suite runs in minutes on 2 CPU cores, the path of the real data
kept beside the repository (tests that use it skip when it is absent), the example scripts' `main`s, and the
helpers more than one test module uses (bAbI files and archives, click batches, a short Trainer run, loading a
checkpoint as remote code)."""

import bz2
import gzip
import importlib.util
import io
import lzma
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from datasets import Dataset
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, BertTokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryForQuestionAnswering  # noqa: E402
from rm_hf.trainer import RehearsalMemoryTrainer, RehearsalTrainingArguments  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_ENCODER = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "vocab_size": 50,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def tiny_config(**overrides) -> RehearsalMemoryConfig:
    values = {"encoder_config": dict(TINY_ENCODER), "num_memory_slots": 4, "num_memory_heads": 2, "segment_length": 8}
    values.update(overrides)
    return RehearsalMemoryConfig(**values)


def example_module(name: str):
    """examples/<name>.py, imported."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_main(name: str):
    """`main(argv)` of examples/<name>.py, to run a script in-process (several times faster than a subprocess)."""
    return example_module(name).main


# Each rank runs the script as `__main__`, then reports in a file of its own whether the gloo process group outlived
# it (printed reports of two ranks can interleave mid-line in one pipe). One left open is torn down during
# interpreter finalisation, when gloo's worker threads may still hold tensors: now and then a rank then aborted at
# exit ("terminate called without an active exception", SIGABRT) after a good run.
RUN_THEN_REPORT = """import os, pathlib, runpy, sys, torch.distributed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
report = pathlib.Path(__file__).with_name(f"exit_report_rank{os.environ['RANK']}.txt")
report.write_text(f"process group open at exit: {torch.distributed.is_initialized()}")
"""


def torchrun(tmp_path: Path, script: Path, processes: int = 2) -> list[str]:
    """The command that runs `script` in `processes` torchrun processes (DDP over gloo on CPU), each reporting at
    exit whether it closed its process group (check with `assert_process_groups_closed(tmp_path)`)."""
    wrapper = tmp_path / "run_then_report.py"
    wrapper.write_text(RUN_THEN_REPORT)
    # --standalone: a free port of its own, never one a previous run still holds
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            str(wrapper), str(script)]  # fmt: skip


def assert_process_groups_closed(tmp_path: Path, processes: int = 2) -> None:
    reports = [(tmp_path / f"exit_report_rank{rank}.txt").read_text() for rank in range(processes)]
    assert reports == ["process group open at exit: False"] * processes, reports


# ---------------------------------------------------------------------------------------------------------
# bAbI files and archives


def babi_text(*lines: str) -> str:
    return "".join(f"{line}\n" for line in lines)


# Our own sentences in the bAbI layout: questions in the middle of a story, so later ids skip question lines.
QA1_TEXT = babi_text(
    "1 Zoe walked into the pantry.",
    "2 Max hurried to the garage.",
    "3 Where is Zoe? \tpantry\t1",
    "4 Zoe strolled to the attic.",
    "5 Where is Zoe? \tattic\t4",
    "6 Where is Max?\tgarage\t2",
    "1 Max wandered to the porch.",
    "2 Where is Max? \tporch\t1",
)
QA8_TEXT = babi_text(
    "1 Zoe grabbed the cup.",
    "2 Max went to the porch.",
    "3 Zoe grabbed the hat.",
    "4 What is Zoe holding?\tcup,hat\t1 3",
)
QA1_NAME = "qa1_single-supporting-fact_train.txt"
QA8_NAME = "qa8_lists-sets_train.txt"


def write(folder: Path, name: str, text: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def tar_bytes(members: dict[str, str]) -> bytes:
    """An uncompressed tarball of `members` (name -> text); fixed mtime and owner, so the bytes are reproducible."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


# Stream compressors with fixed settings (gzip's header would hold the time otherwise).
COMPRESS = {"gz": lambda data: gzip.compress(data, mtime=0), "bz2": bz2.compress, "xz": lzma.compress}


# ---------------------------------------------------------------------------------------------------------
# Click prediction

ITEMS, CATEGORIES = 30, 6
HISTORY = ("history_items", "history_categories", "history_behaviors", "attention_mask")


def click_config(**overrides) -> RehearsalMemoryConfig:
    values = {"item_vocab_size": ITEMS, "category_vocab_size": CATEGORIES, "item_embedding_dim": 8}
    return tiny_config(**{**values, "rehearsal_num_heads": 2, **overrides})


def click_batch(batch=3, length=21) -> dict[str, torch.Tensor]:
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 9:] = 0  # a short history, padded on the right
    return {
        "history_items": torch.randint(1, ITEMS, (batch, length)) * mask,
        "history_categories": torch.randint(1, CATEGORIES, (batch, length)) * mask,
        "history_behaviors": torch.randint(1, 5, (batch, length)) * mask,
        "attention_mask": mask,
        "target_item": torch.randint(1, ITEMS, (batch,)),
        "target_category": torch.randint(1, CATEGORIES, (batch,)),
        "labels": torch.tensor([1.0, 0.0, 1.0])[:batch],
    }


# ---------------------------------------------------------------------------------------------------------
# A short Trainer run

TOY_LABELS = {i: f"answer{i}" for i in range(4)}


def toy_dataset(rows=16, length=24) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (rows, length), generator=generator)
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": [[1] * length] * rows,
            "question_input_ids": torch.randint(1, 50, (rows, 5), generator=generator).tolist(),
            "labels": (ids[:, 0] % 4).tolist(),  # the answer is decided by the first token
        }
    )


def train(tmp_path, batch_size, accumulation, steps=4, model_config=None, **args) -> RehearsalMemoryTrainer:
    """Train a tiny question-answering model for `steps` steps on `toy_dataset` (CPU, no checkpoints); `args` go
    to `RehearsalTrainingArguments`. Returns the trainer, whose `state.log_history` holds the logged losses."""
    torch.manual_seed(0)
    model = RehearsalMemoryForQuestionAnswering(
        tiny_config(id2label=TOY_LABELS, rehearsal_num_heads=2, **(model_config or {}))
    )
    arguments = RehearsalTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        logging_steps=args.pop("logging_steps", steps),
        learning_rate=1e-3,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        **args,
    )
    data = toy_dataset()
    trainer = RehearsalMemoryTrainer(model=model, args=arguments, train_dataset=data, eval_dataset=data)
    trainer.train()
    return trainer


# ---------------------------------------------------------------------------------------------------------
# Remote code

# Runs in a fresh interpreter where `import rm_hf` fails, from a directory that does not contain it.
REMOTE_LOAD = textwrap.dedent(
    """
    import sys, torch
    sys.modules["rm_hf"] = None  # make the installed package unimportable
    from transformers import AutoModel
    checkpoint, ids_path = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    torch.save(model(torch.load(ids_path, weights_only=True)).memory, ids_path + ".out")
    print(type(model).__name__)
    """
)


def remote_memory(checkpoint, ids, tmp_path) -> tuple[str, torch.Tensor]:
    """Load `checkpoint` with `AutoModel(trust_remote_code=True)` in a subprocess without rm_hf; returns the loaded
    class's name and the memory it writes for `ids`."""
    ids_path = tmp_path / "ids.pt"
    torch.save(ids, ids_path)
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(checkpoint), str(ids_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()[-1], torch.load(str(ids_path) + ".out", weights_only=True)


@pytest.fixture
def babi_dir() -> Path:
    path = SHARED_DATA / "babi"
    if not path.is_dir():
        pytest.skip("real bAbI data not present beside the repository")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def keep_transformers_verbosity():
    """For tests that run an example script in-process: the scripts turn transformers' logging up."""
    verbosity = transformers.logging.get_verbosity()
    yield
    transformers.logging.set_verbosity(verbosity)


def tiny_pretrained_encoder(folder: Path, words: list[str]) -> Path:
    """A tiny BERT with random weights and a WordPiece tokenizer knowing `words` (lowercase), saved to `folder` as a
    pretrained encoder would be: what `--encoder_name_or_path` loads, offline."""
    folder.mkdir(parents=True)
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]))
    BertTokenizer(vocab={token: index for index, token in enumerate(vocab)}).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(1)
    BertModel(config).save_pretrained(folder)
    return folder


def assert_backbone_is(encoder: Path, output: Path) -> None:
    """The model saved in `output` holds exactly the weights of the pretrained encoder saved in `encoder` (less its
    unused pooler) as its backbone."""
    saved, pretrained = load_file(output / "model.safetensors"), load_file(encoder / "model.safetensors")
    backbone = {name.removeprefix("rehearsal_memory.encoder."): saved[name] for name in saved if ".encoder." in name}
    assert backbone.keys() == {name for name in pretrained if not name.startswith("pooler.")}
    for name, weight in backbone.items():
        torch.testing.assert_close(weight, pretrained[name], rtol=0, atol=0, msg=name)
