"""Shared fixtures. The real data lives beside the repository in ../shared/data (or $SHARED_DATA_DIR)."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the scripts are top-level modules
SHARED_DATA = Path(os.environ.get("SHARED_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    """Every test starts from the same seed and leaves the default dtype as it found it."""
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session", autouse=True)
def _hf_cache_in_tmp(tmp_path_factory):
    """Hugging Face caches in a temporary folder: `datasets` writes lock files there even when streaming a
    local file, and the tests write nowhere but temporary folders (HOME may be read-only in CI)."""
    cache = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(cache))  # also seen by the scripts the tests run in a subprocess
        mp.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
        if "datasets" in sys.modules:  # it reads the variables when imported
            import datasets.config
            mp.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
            mp.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "datasets" / "downloads")
        yield


def need_shared_data(relpath: str) -> Path:
    """A file of the shared data; in CI its absence fails the test instead of skipping it."""
    path = SHARED_DATA / relpath
    if not path.exists():
        msg = f"shared data missing: {path} (set SHARED_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def corpus_slice(tmp_path_factory) -> Path:
    """The first 40 documents of the shared corpus's first training file (~100k tokens), as jsonl."""
    src = need_shared_data("corpus/train_00.jsonl")
    out = tmp_path_factory.mktemp("corpus") / "slice.jsonl"
    with open(src) as f, open(out, "w") as g:
        for _, line in zip(range(40), f):
            g.write(json.dumps({"text": json.loads(line)["text"]}) + "\n")
    return out


@pytest.fixture(scope="session")
def corpus_shards(corpus_slice, tmp_path_factory) -> Path:
    """corpus_slice through fineweb.py: one 16k-token val shard and several train shards."""
    import fineweb
    out = tmp_path_factory.mktemp("shards")
    fineweb.main(["--input", str(corpus_slice), "--out-dir", str(out), "--shard-size", "16384", "--workers", "1"])
    return out
