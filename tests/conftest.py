"""Shared fixtures and helpers of the tests.

The data the tests read ships with them in tests/data (its README says where each file comes from), so a
fresh clone runs the whole suite offline. Tests that start processes, compile or take long are marked `slow`:

    python -m pytest tests/ -q -m "not slow"   # the developer's loop, under two minutes
    python -m pytest tests/ -q                 # everything, as CI runs it
"""

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the scripts are top-level modules
DATA = Path(__file__).resolve().parent / "data"
CORPUS = DATA / "corpus.jsonl"  # 56 public-domain documents, 101,000 GPT-2 tokens
HELLASWAG = DATA / "hellaswag.jsonl"  # the first 400 HellaSwag validation examples

from model import GPT, GPTConfig  # noqa: E402 (after the path above)

TINY = GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32)  # seconds on a CPU; the tiny preset's model
# every departure from GPT-2 that --recipe modern turns on
MODERN = dict(rope=True, qk_norm=True, mlp="relu2", logit_softcap=15.0, zero_init_proj=True)


# matplotlib's font cache and settings in a temporary folder, not in HOME (read-only in CI): set before any test
# module imports plot_log, which imports matplotlib, which reads it then
if "MPLCONFIGDIR" not in os.environ:
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="matplotlib-")
    atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], True)
CI = os.environ.get("CI") == "true"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts processes (subprocess, torchrun, signals), compiles, or runs "
                                       "long; deselect with -m 'not slow'")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a skipped test fails: what it needs (a package, a file, the platform) is missing there,
    and a skip would hide that the test never ran."""
    report = (yield).get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole test file skipped while it is collected (pytest.importorskip at its top)."""
    report = (yield).get_result()
    if CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"


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

@pytest.fixture
def hub_offline(monkeypatch):
    """The Hugging Face hub offline for the test, as HF_HUB_OFFLINE=1 makes it: in the environment (for
    subprocesses and a later import) and in huggingface_hub's constants, which it reads once, when imported
    (fineweb.py imports it through `datasets`). Without the second, the hub retries the network for ~25 s."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

# -----------------------------------------------------------------------------
# data


@pytest.fixture(scope="session")
def corpus_slice() -> Path:
    """tests/data/corpus.jsonl: 56 public-domain documents (~100k tokens), one JSON object a line."""
    return CORPUS


@pytest.fixture(scope="session")
def hellaswag_data() -> Path:
    """tests/data/hellaswag.jsonl: the first 400 HellaSwag validation examples."""
    return HELLASWAG


@pytest.fixture(scope="session")
def corpus_shards(tmp_path_factory) -> Path:
    """The corpus through fineweb.py: one 16k-token val shard and six train shards."""
    import fineweb
    out = tmp_path_factory.mktemp("shards")
    fineweb.main(["--input", str(CORPUS), "--out-dir", str(out), "--shard-size", "16384", "--workers", "1"])
    return out

# -----------------------------------------------------------------------------
# training runs and their logs


def train(shards, out, *flags) -> None:
    """A tiny-preset run of train_gpt.main in this process, on CPU in float32 (bit-reproducible)."""
    import train_gpt
    train_gpt.main(["--preset", "tiny", "--data-dir", str(shards), "--out-dir", str(out), "--dtype", "float32",
                    "--device", "cpu", *flags])


def read_log(out) -> list[dict]:
    """The entries of out/log.jsonl, in order."""
    with open(Path(out) / "log.jsonl") as f:
        return [json.loads(line) for line in f]


def metric(log: list[dict], name: str) -> dict[int, float]:
    """step -> value of one logged metric."""
    return {e["step"]: e[name] for e in log if name in e}


def logged(out) -> dict:
    """What a resumed run must log as the uninterrupted one did: train and val losses and samples, keyed by
    (name, step); none may be logged twice."""
    got = {}
    for e in read_log(out):
        for name in ("train_loss", "val_loss", "samples"):
            if name in e:
                assert (name, e["step"]) not in got, f"{name} logged twice at step {e['step']}"
                got[(name, e["step"])] = e[name]
    return got


def assert_equal_state(a, b, where="") -> None:
    """Two (nested) state dicts hold the same keys and bit-identical tensors and values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_equal_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):  # (a loaded optimizer may hold its betas as a list)
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_state(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    else:
        assert a == b, where


def assert_same_run(ref, out, last_step: int) -> None:
    """Run `out` (stopped and resumed) is run `ref` (uninterrupted), bit for bit: every step trained once, the
    same train and val losses and samples, and the same weights and optimizer state in the last checkpoint."""
    assert logged(out) == logged(ref)
    assert [e["step"] for e in read_log(out) if "train_loss" in e] == list(range(last_step))
    name = f"ckpt_{last_step:06d}.pt"
    a = torch.load(Path(ref) / name, weights_only=True)
    b = torch.load(Path(out) / name, weights_only=True)
    assert_equal_state(a["model"], b["model"], "model")
    assert_equal_state(a["optimizer"], b["optimizer"], "optimizer")

def write_model_checkpoint(out, model: GPT, cfg, step: int) -> Path:
    """An out dir holding one checkpoint of `model` (trained with TrainConfig cfg), as train_gpt.py writes it,
    with no optimizer, loader or random state: what generate.py, hellaswag.py and export_hf.py read."""
    from dataclasses import asdict

    from checkpoint import checkpoint_path, save_checkpoint
    save_checkpoint(checkpoint_path(str(out), step), {
        "model": model.state_dict(), "optimizer": {}, "step": step, "events_done": True, "config": asdict(cfg),
        "train_loader": {}, "rng": {}, "log_bytes": 0})
    return Path(out)

# -----------------------------------------------------------------------------
# models


def small_gpt(**options) -> GPT:
    """A random GPT that reads every HellaSwag example whole (the longest of tests/data is 96 tokens, of the
    whole validation set 149)."""
    return GPT(GPTConfig(**{**dict(block_size=160, n_layer=2, n_head=2, n_embd=32), **options})).eval()


def random_model(config: GPTConfig = TINY, seed: int = 0, scale: float = 0.1) -> GPT:
    """A model of `config` with every weight moved off its init by N(0, scale): zero-initialised projections
    (--recipe modern) would hide attention, zero biases and unit LayerNorms a mix-up of them."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


# HellaSwag: the first validation example, as written in the file
ITEM = {"ctx": "A man is sitting on a roof. he", "label": 3, "activity_label": "Roof shingle removal",
        "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                    "is holding a rubik's cube.", "starts pulling up roofing on a roof."]}

