"""python -m pytest tests/test_checkpoint_format.py -v

The checkpoint format is a promise to every run already on disk: a checkpoint written by an earlier version
of train_gpt.py must load, resume and export with this one. tests/golden/checkpoint_layout.json holds the
layout (keys, types, tensor shapes and dtypes) of checkpoints made by the code before the redesign of the
scripts into modules; checkpoints written now must have the same layout. Regenerate it only on purpose,
for a format change that old checkpoints survive (and say so in the commit).
"""

import json
import re

import pytest
import torch

from checkpoint import load_checkpoint
from conftest import REPO, train

GOLDEN = REPO / "tests" / "golden" / "checkpoint_layout.json"
RUNS = {  # the flags the golden checkpoints were made with (tests/golden/checkpoint_layout.json's "_made_by")
    "gpt2": (["--max-steps", "6", "--checkpoint-every", "3", "--val-every", "3"], "ckpt_000006.pt"),
    "modern": (["--recipe", "modern", "--max-steps", "4", "--warmup-steps", "1", "--checkpoint-every", "2",
                "--val-every", "2"], "ckpt_000004.pt"),
}


def layout(value):
    """A checkpoint's structure without its values: dict keys, value types, tensor shapes and dtypes."""
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, dict):
        return {str(k): layout(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [layout(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize("recipe", RUNS)
def test_checkpoints_keep_the_layout_of_earlier_versions(corpus_shards, tmp_path, recipe):
    """A checkpoint written now has the keys, types and tensor shapes of one written before the redesign
    (the config may have gained fields: an older checkpoint lacking them loads with their defaults)."""
    flags, name = RUNS[recipe]
    train(corpus_shards, tmp_path, *flags)
    ckpt = torch.load(tmp_path / name, weights_only=True)
    got, want = layout(ckpt), json.loads(GOLDEN.read_text())[recipe]
    assert set(want["config"]) <= set(got["config"]), "a config field was removed"
    got["config"] = {k: v for k, v in got["config"].items() if k in want["config"]}
    assert got == want
    load_checkpoint(str(tmp_path / name))  # and its checksum is the one the loader computes


def test_a_run_folder_named_like_a_glob_pattern(tmp_path):
    """A run folder whose name holds [ ] (run[1], lr=[6e-4]) is found as it is: its checkpoints were not seen,
    so a new run there wrote over them, --resume started over, and generate.py found none."""
    from checkpoint import checkpoint_to_resume, list_checkpoints, open_checkpoint, remove_partial_checkpoints
    from conftest import TINY, write_model_checkpoint
    from model import GPT
    (tmp_path / "run1").mkdir()  # what the pattern run[1] would match
    out = tmp_path / "run[1]"
    out.mkdir()
    write_model_checkpoint(out, GPT(TINY), TINY, 7)
    (out / "ckpt_000008.pt.tmp").write_bytes(b"half")
    assert list_checkpoints(str(out)) == [str(out / "ckpt_000007.pt")]
    assert open_checkpoint(str(out))[1]["step"] == 7
    with pytest.raises(SystemExit, match="holds checkpoints of an earlier run"):
        checkpoint_to_resume(str(out), resume=False)
    remove_partial_checkpoints(str(out))
    assert sorted(p.name for p in out.iterdir()) == ["ckpt_000007.pt"]


def test_a_path_through_a_file_is_one_line(tmp_path):
    """--checkpoint ckpt_000007.pt/ (or a path inside a file): the OS's reason, not a NotADirectoryError
    traceback from the damaged-file diagnosis."""
    from checkpoint import open_checkpoint
    from conftest import TINY, write_model_checkpoint
    from model import GPT
    write_model_checkpoint(tmp_path, GPT(TINY), TINY, 7)
    for path in [f"{tmp_path}/ckpt_000007.pt/", f"{tmp_path}/ckpt_000007.pt/ckpt_000001.pt"]:
        with pytest.raises(SystemExit, match=f"^error: cannot read checkpoint {re.escape(path)}: Not a directory$"):
            open_checkpoint(path)
