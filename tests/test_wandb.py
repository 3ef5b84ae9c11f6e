"""python -m pytest tests/test_wandb.py -v

--wandb PROJECT: the log's events also go to Weights & Biases (offline here: WANDB_MODE=offline writes the
run's files under --out-dir), a resumed run continues the same W&B run, and without the package the flag
stops with one line saying how to install it.
"""

import importlib.util
import json

import pytest

import wandb  # requirements-dev.txt: optional for users, needed by these tests
from conftest import metric, read_log, train


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))  # nothing written to the home folder
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))


def records(path) -> list:
    """The records of an offline W&B run file, <out>/wandb/offline-run-*/run-<id>.wandb: a 7-byte header,
    then LevelDB-style 32 KB blocks of chunks (crc32, 2-byte length, type: 1 whole, 2 first, 3 middle,
    4 last), each record a wandb_internal_pb2.Record."""
    from wandb.proto.wandb_internal_pb2 import Record
    data, pos, part, out = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(part)
            out.append(record)
            part = b""
    return out


def runs(out) -> dict:
    """W&B run id -> (its display name, config keys, step -> {metric: value}) of every offline run file."""
    found = {}
    for path in sorted((out / "wandb").glob("offline-run-*/run-*.wandb")):
        run_id, name, config, history = None, None, set(), {}  # run_id None: the file holds no run record
        for r in records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run_id, name = r.run.run_id, r.run.display_name
                config |= {item.key for item in r.run.config.update}
            elif kind == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
                history[items.pop("_step")] = items
        found.setdefault(run_id, []).append((name, config, history))
    return found


@pytest.mark.slow  # two training runs, a few seconds
def test_metrics_go_to_wandb_and_a_resumed_run_continues_it(corpus_shards, tmp_path, offline):
    """The W&B run takes the --wandb-run name and the run's config, and logs the log's train loss, lr, grad norm
    and val loss at the same steps; --resume continues that W&B run (its id kept in <out>/wandb_id) from step 6."""
    out = tmp_path / "run"
    train(corpus_shards, out, "--max-steps", "6", "--checkpoint-every", "3", "--wandb", "tests",
          "--wandb-run", "tiny-test")
    run_id = (out / "wandb_id").read_text().strip()
    [(name, config, history)] = runs(out)[run_id]
    assert name == "tiny-test" and {"n_layer", "max_lr", "recipe"} <= config
    log = read_log(out)
    for key in ("train_loss", "lr", "grad_norm", "val_loss"):  # the log's metrics, step by step
        assert {s: v[key] for s, v in history.items() if key in v} == pytest.approx(metric(log, key)), key

    train(corpus_shards, out, "--max-steps", "9", "--checkpoint-every", "3", "--resume", "--wandb", "tests")
    assert (out / "wandb_id").read_text().strip() == run_id
    [_, (_, _, resumed)] = runs(out)[run_id]  # a second file of the same W&B run: it continues
    assert sorted(s for s, v in resumed.items() if "train_loss" in v) == [6, 7, 8]
    assert resumed[8]["train_loss"] == pytest.approx(metric(read_log(out), "train_loss")[8])


def test_without_wandb_the_flag_stops_with_one_line(corpus_shards, tmp_path, monkeypatch, capsys):
    """Without the wandb package, --wandb stops with one line saying how to install it, before the run begins (no
    log.jsonl), not with an ImportError at the run's first logged event."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        train(corpus_shards, tmp_path / "run", "--wandb", "tests")
    assert str(e.value) == "error: --wandb needs the wandb package: pip install wandb"
    assert not (tmp_path / "run" / "log.jsonl").exists()  # stopped before the run began


def test_wandb_without_an_api_key_stops_with_one_line(corpus_shards, tmp_path, monkeypatch):
    """--wandb where W&B has no API key (never logged in, online mode): one line naming the reason and the way
    out, before the first step, not wandb's UsageError traceback."""
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc: no key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.raises(SystemExit) as e:
        train(corpus_shards, tmp_path / "run", "--wandb", "tests")
    assert str(e.value) == ("error: --wandb: W&B could not start the run: No API key configured. Use `wandb login` "
                            "to log in. (or log offline: WANDB_MODE=offline, or leave out --wandb)")
    assert [e["event"] for e in read_log(tmp_path / "run")] == ["start"]  # no step was taken


def test_wandb_is_optional():
    """requirements.txt leaves it out: users who don't log there don't install it."""
    from conftest import REPO
    assert "wandb" not in (REPO / "requirements.txt").read_text()
