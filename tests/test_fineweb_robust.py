"""python -m pytest tests/test_fineweb_robust.py -v

fineweb.py against the things that go wrong: a run killed at any moment resumes to the bytes of an
uninterrupted run; bad input stops it with one line and no traceback; hostile bytes reach read_shard and
the document readers as ShardError and InputError, never as anything else.
"""

import atexit
import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

import fineweb
import shards
from conftest import REPO
from fineweb import InputError
from shards import HEADER_BYTES, HEADER_INTS, SHARD_MAGIC, SHARD_VERSION, ShardError, read_shard

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    # hypothesis' pytest plugin caches the constants of local modules in ./.hypothesis while the tests are
    # collected: keep that in a temporary folder, like everything the tests write
    _hypothesis_home = tempfile.mkdtemp(prefix="hypothesis-")
    set_hypothesis_home_dir(_hypothesis_home)
    atexit.register(shutil.rmtree, _hypothesis_home, ignore_errors=True)

# -----------------------------------------------------------------------------
# helpers


def shard_bytes(out) -> dict[str, bytes]:
    """name -> bytes of every shard in a folder (not the progress manifest)."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}


def mtimes(out) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("*.bin"))}


def small_input(corpus_slice, tmp_path):
    """The first 6 documents of the corpus slice (~15k tokens): quick to shard again and again."""
    path = tmp_path / "small.jsonl"
    with open(corpus_slice) as f:
        path.write_text("".join(line for _, line in zip(range(6), f)))
    return path


class Killed(BaseException):
    """Stands for kill -9 inside one process: no `except Exception` catches it, no manifest is written."""


def crash_at_write(monkeypatch, k: int) -> None:
    """The k-th atomic write (shard or manifest) dies half-way: half its bytes in the .tmp file, no rename."""
    calls = [0]
    real = fineweb.atomic_write

    @contextlib.contextmanager
    def atomic_write(path, **kw):
        calls[0] += 1
        if calls[0] != k:
            with real(path, **kw) as tmp:
                yield tmp
            return
        yield path + ".tmp"  # the whole file is written there ...
        with open(path + ".tmp", "r+b") as f:
            f.truncate(os.path.getsize(path + ".tmp") // 2)  # ... and cut in half by the crash, before the rename
        raise Killed
    monkeypatch.setattr(fineweb, "atomic_write", atomic_write)  # the manifest
    monkeypatch.setattr(shards, "atomic_write", atomic_write)  # the shards

# -----------------------------------------------------------------------------
# 1. interrupted runs resume to the same bytes


def kill_when(proc, out, moment, rng, sig) -> str:
    """Wait for a moment of a fineweb.py run, then signal its process group (the script and its tokenizer
    processes, as kill -9 of them all or Ctrl-C in a terminal do); what the moment was. ("shards", k): once
    k shards are on disk; ("random", n): once a random number of them, 0 to n - 1, are (0: as soon as the job
    has started, while the first shard is tokenized). The job writes all its shards within ~20 ms of the first:
    the poll, not a sleep, is what makes the signal land mid-job."""
    kind, arg = moment
    k = rng.randrange(arg) if kind == "random" else arg
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        # the manifest comes first (imports done, the job has started), then each shard
        if (out / fineweb.PROGRESS_FILE).exists() and len(list(out.glob("*.bin"))) >= k:
            break
        time.sleep(0.002)
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass  # it had finished
    proc.wait(timeout=60)
    return f"{sig!r} once {k} shards were on disk: {len(list(out.glob('*.bin')))} there, exit {proc.returncode}"


@pytest.mark.slow
@pytest.mark.parametrize("moment,workers,sig", [
    (("shards", 1), "1", signal.SIGKILL),
    (("shards", 4), "2", signal.SIGKILL),
    (("random", 6), "2", signal.SIGKILL),  # 0 to 5 of the job's 7 shards
    (("shards", 2), "2", signal.SIGINT),
], ids=["kill -9 after shard 1", "kill -9 after shard 4, 2 workers", "kill -9 at a random time, 2 workers",
        "Ctrl-C after shard 2, 2 workers"])
def test_killed_run_resumes_to_the_same_bytes(corpus_slice, corpus_shards, tmp_path, capsys, moment, workers, sig):
    """fineweb.py killed with SIGKILL mid-job (after the 1st or 4th shard, or after a random number of them) or
    stopped with Ctrl-C leaves only complete, correct shards, and the same command run again writes what an
    uninterrupted run writes, without rewriting the shards it had recorded."""
    ref = shard_bytes(corpus_shards)  # the same job, uninterrupted, with 1 worker
    out = tmp_path / "out"
    args = ["--input", str(corpus_slice), "--out-dir", str(out), "--shard-size", "16384", "--workers", workers]
    seed = int.from_bytes(os.urandom(4), "little")
    with open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, str(REPO / "fineweb.py"), *args], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=err)
        what = kill_when(proc, out, moment, random.Random(seed), sig) + f" (seed {seed})"
        err.seek(0)
        stderr = err.read()
    if sig == signal.SIGINT and proc.returncode != 0:  # Ctrl-C: one line, no traceback (from the workers neither)
        assert proc.returncode == 130 and "Traceback" not in stderr, what + stderr
        lines = error_lines(stderr)
        assert len(lines) == 1 and re.fullmatch(r"interrupted after \d+ shards: run the same command again to "
                                                r"resume", lines[0]), what + stderr
    for name, data in shard_bytes(out).items():  # every shard on disk is whole and right: the loader may read it
        assert data == ref[name], what
        read_shard(str(out / name))
    recorded = json.loads((out / fineweb.PROGRESS_FILE).read_text())["shards"] if (
        out / fineweb.PROGRESS_FILE).exists() else []
    what += f", {len(recorded)} of {len(ref)} shards recorded"
    if sig == signal.SIGKILL:  # really killed, mid-job: not a re-run of a finished job
        assert proc.returncode == -signal.SIGKILL and len(recorded) < len(ref), what
    before = mtimes(out)
    fineweb.main(args)
    assert shard_bytes(out) == ref, what
    assert not list(out.glob("*.tmp")), what
    after = mtimes(out)
    assert all(after[s["file"]] == before[s["file"]] for s in recorded), what  # recorded shards not rewritten
    if recorded and len(recorded) < len(ref):
        assert "resuming" in capsys.readouterr().out


@pytest.mark.parametrize("shard_size,max_tokens,block",
                         [(4000, 11000, None), (5000, 3000, None), (3000, 3000, None), (4000, 11000, 3000)],
                         ids=["shards", "input smaller than a shard", "input of exactly one shard",
                              "jsonl read in blocks of 3000 bytes"])
def test_crash_at_every_write_resumes_to_the_same_bytes(corpus_slice, tmp_path, monkeypatch, shard_size,
                                                        max_tokens, block):
    """A run that dies during any of its writes (shard or manifest), also when the whole input is smaller
    than one shard (10% val decided at the end), resumes to the bytes of an uninterrupted run. With small
    blocks, the resumed run skips documents that end inside a block and lines longer than a block."""
    if block:
        monkeypatch.setattr(fineweb, "JSONL_BLOCK", block)
    src = small_input(corpus_slice, tmp_path)
    flags = ["--input", str(src), "--shard-size", str(shard_size), "--max-tokens", str(max_tokens), "--workers", "1"]
    fineweb.main([*flags, "--out-dir", str(tmp_path / "ref")])
    ref = shard_bytes(tmp_path / "ref")
    n_writes = 2 * len(ref) + 2  # the first manifest, each shard and its manifest, the final manifest
    for k in range(1, n_writes + 1):
        out = tmp_path / f"crash{k}"
        with monkeypatch.context() as m:
            crash_at_write(m, k)
            with pytest.raises(Killed):
                fineweb.main([*flags, "--out-dir", str(out)])
        (out / "mine.tmp").write_text("not fineweb's")
        fineweb.main([*flags, "--out-dir", str(out)])
        assert shard_bytes(out) == ref, f"crash at write {k}"
        assert sorted(p.name for p in out.glob("*.tmp")) == ["mine.tmp"]  # only its own leftovers are removed
    assert json.loads((out / fineweb.PROGRESS_FILE).read_text())["complete"] is True


def test_input_of_exactly_one_shard_is_split_into_val_and_train(corpus_slice, tmp_path):
    """Input of exactly one shard is split like a smaller one, 10% val and the rest train. Its full shard
    used to be written as val at once, leaving no train shard."""
    src = small_input(corpus_slice, tmp_path)
    for name, shard_size in (("exact", "3000"), ("bigger", "5000")):
        fineweb.main(["--input", str(src), "--out-dir", str(tmp_path / name), "--shard-size", shard_size,
                      "--max-tokens", "3000", "--workers", "1"])
    got = shard_bytes(tmp_path / "exact")
    assert list(got) == ["train_000001.bin", "val_000000.bin"]
    assert [len(read_shard(str(tmp_path / "exact" / n))) for n in got] == [2700, 300]
    assert got == shard_bytes(tmp_path / "bigger")  # the same tokens as when the shard is bigger than the input


def test_finished_job_rerun_is_a_quick_no_op(corpus_slice, corpus_shards, tmp_path, capsys):
    """Run again, a finished job rewrites nothing and says so."""
    out = tmp_path / "out"
    shutil.copytree(corpus_shards, out)
    before = mtimes(out)
    t0 = time.perf_counter()
    written = fineweb.main(["--input", str(corpus_slice), "--out-dir", str(out), "--shard-size", "16384"])
    assert time.perf_counter() - t0 < 2
    assert "nothing to do" in capsys.readouterr().out
    assert mtimes(out) == before
    assert [os.path.basename(p) for p in written] == ["val_000000.bin"] + sorted(set(before) - {"val_000000.bin"})


def test_damaged_shard_is_written_again(corpus_slice, corpus_shards, tmp_path, capsys):
    """A truncated or missing shard of a finished job is written again; the shards before it are kept."""
    out = tmp_path / "out"
    shutil.copytree(corpus_shards, out)
    ref, before = shard_bytes(out), mtimes(out)
    (out / "train_000003.bin").write_bytes(ref["train_000003.bin"][:-2])
    (out / "train_000005.bin").unlink()
    fineweb.main(["--input", str(corpus_slice), "--out-dir", str(out), "--shard-size", "16384", "--workers", "1"])
    assert "train_000003.bin is missing or damaged" in capsys.readouterr().out
    assert shard_bytes(out) == ref
    after = mtimes(out)
    assert all(after[n] == before[n] for n in ("val_000000.bin", "train_000001.bin", "train_000002.bin"))


def test_other_job_in_out_dir_is_refused(corpus_slice, tmp_path):
    """Other arguments, a changed input, a damaged manifest or shards without one: refused in one line, nothing
    touched; once the shards are deleted, as the line says, the new job runs."""
    src = small_input(corpus_slice, tmp_path)
    out = tmp_path / "out"
    flags = ["--input", str(src), "--out-dir", str(out), "--max-tokens", "11000"]
    fineweb.main([*flags, "--shard-size", "2000"])
    ref = shard_bytes(out)
    advice = ": delete them or choose another --out-dir$"
    with pytest.raises(SystemExit, match=r"^error: .*out holds the shards of another job \(made with "
                                         r"--shard-size 2000\)" + advice):
        fineweb.main([*flags, "--shard-size", "3000"])
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(SystemExit, match=r"another job \(.*small.jsonl has changed since\)" + advice):
        fineweb.main([*flags, "--shard-size", "2000"])
    assert shard_bytes(out) == ref
    for p in out.glob("*.bin"):
        p.unlink()
    fineweb.main([*flags, "--shard-size", "3000"])  # the other job's manifest is left: nothing to lose
    ref = shard_bytes(out)
    assert len(ref) == 4  # 3 x 3000 + 2000 tokens
    (out / fineweb.PROGRESS_FILE).write_text('{"format": 1, "job": ')
    with pytest.raises(SystemExit, match=r"out holds shards and a damaged fineweb_progress.json" + advice):
        fineweb.main([*flags, "--shard-size", "3000"])
    (out / fineweb.PROGRESS_FILE).unlink()
    with pytest.raises(SystemExit, match=r"out already holds shards \(val_000000.bin, train_000001.bin, ...\) "
                                         r"that fineweb.py did not record" + advice):
        fineweb.main([*flags, "--shard-size", "3000"])
    assert shard_bytes(out) == ref

# -----------------------------------------------------------------------------
# 2. bad input: one line naming the file, no traceback, nothing written


def parquet_bytes(table) -> bytes:
    import io

    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def bad_parquet(kind: str) -> bytes:
    import pyarrow as pa
    if kind == "no text column":
        return parquet_bytes(pa.table({"body": ["a", "b"]}))
    if kind == "text of ints":
        return parquet_bytes(pa.table({"text": [1, 2]}))
    if kind == "null text":
        return parquet_bytes(pa.table({"text": ["a", None]}))
    if kind == "no rows":
        return parquet_bytes(pa.table({"text": pa.array([], pa.string())}))
    whole = parquet_bytes(pa.table({"text": ["a document"] * 100}))
    return whole[:len(whole) // 2]  # "truncated"


BAD_INPUTS = [  # file name, its bytes (None: no such file), what the error line says after "error: <path>"
    ("a.jsonl", None, r"^error: input file not found: .*a.jsonl$"),
    ("a.csv", b"text\nhello\n", r"a.csv: input files must be .txt, .jsonl or .parquet$"),
    ("a.bin", bytes(range(256)), r"a.bin: input files must be .txt, .jsonl or .parquet$"),
    ("a.json", b'{"text": "a"}\n', r"a.json: input files must be .txt, .jsonl or .parquet$"),  # JSON lines go in a .jsonl
    ("a.txt", b"", r"a.txt is empty$"),
    ("a.jsonl", b"", r"a.jsonl is empty$"),
    ("a.jsonl", b"\n  \n\n", r"a.jsonl holds no documents$"),
    ("a.jsonl", b'{"text": "fine"}\nnot json at all\n', r"a.jsonl, line 2: not JSON \(Expecting value at column 1\)$"),
    ("a.jsonl", b'{"text": "fine"}\n{"text": "cut', r"a.jsonl, line 2: not JSON \(Unterminated string"),
    ("a.jsonl", b'{"text": "caf\xe9"}\n', r"a.jsonl, line 1: not UTF-8$"),
    ("a.jsonl", b'["one", "two"]\n', r"a.jsonl holds a JSON array, not JSON lines"),
    ("a.jsonl", b'{"text": "a"}\n"just a string"\n', r"a.jsonl, line 2: a string, not an object with a 'text' field$"),
    ("a.jsonl", b'{"text": "a"}\n\n{"body": "no text"}\n', r"a.jsonl, line 3: no 'text' field$"),
    ("a.jsonl", b'{"text": 42}\n', r"a.jsonl, line 1: 'text' is a number, not a string$"),
    ("a.jsonl", b'{"text": "a"}\n{"text": null}\n', r"a.jsonl, line 2: 'text' is null, not a string$"),
    ("a.jsonl", b'{"text": "a"}\n{"text": {"nested": "b"}}\n', r"a.jsonl, line 2: 'text' is an object, not a string$"),
    ("a.jsonl", b'{"text": "a"}\n null \n', r"a.jsonl, line 2: null, not an object with a 'text' field$"),
    ("a.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"a.txt is not UTF-8 text: byte 0 is 0x89 \(a binary file"),
    ("a.txt", "Caf\u00e9 cr\u00e8me".encode("latin-1"), r"a.txt is not UTF-8 text: byte 3 is 0xe9"),
    ("a.txt", "text in UTF-16".encode("utf-16-le"), r"a.txt holds NUL bytes: a binary file, or text that is not UTF-8"),
    ("a.parquet", b"PAR1 but not really parquet", r"a.parquet: cannot read it as a parquet file \(Parquet magic"),
    ("a.parquet", "truncated", r"a.parquet: cannot read it as a parquet file"),
    ("a.parquet", "no text column", r"a.parquet: row 1 has no 'text' column \(it has: body\)$"),
    ("a.parquet", "text of ints", r"a.parquet: row 1: 'text' is a number, not a string$"),
    ("a.parquet", "null text", r"a.parquet: row 2: 'text' is null, not a string$"),
    ("a.parquet", "no rows", r"a.parquet holds no documents$"),
]


@pytest.mark.parametrize("name,content,message", BAD_INPUTS, ids=[f"{n}:{m[:30]}" for n, _, m in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_file(tmp_path, name, content, message):
    """Bad input stops fineweb.py with one line that names the file (and line), and writes no shard."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(bad_parquet(content) if isinstance(content, str) else content)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        fineweb.main(["--input", str(path), "--out-dir", str(out), "--workers", "1", "--shard-size", "1000"])
    msg = str(e.value)
    assert msg.startswith(f"error: {path}") or msg.startswith("error: input file not found")
    assert "\n" not in msg and len(msg) < 300
    assert re.search(message, msg), msg
    assert not list(out.glob("*.bin"))


def test_input_folder_is_refused(tmp_path):
    """A folder given as an input file gets one line suggesting the files in it."""
    with pytest.raises(SystemExit, match=r"^error: .* is a folder: give the files in it"):
        fineweb.main(["--input", str(tmp_path), "--out-dir", str(tmp_path / "out")])


def test_input_given_twice_is_refused(tmp_path):
    """A file given twice, under the same or another name (a glob and its name, a link, a hard link), is refused
    in one line before any work: its documents would be in val and train both."""
    (tmp_path / "a.jsonl").write_text('{"text": "A short document."}\n')
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "a.jsonl")
    os.link(tmp_path / "a.jsonl", tmp_path / "hard.jsonl")
    for twice, message in ([tmp_path / "a.jsonl"] * 2, r"a.jsonl is given twice"), (
            [tmp_path / "a.jsonl", tmp_path / "." / "link.jsonl"], r"link.jsonl is the same file as .*a.jsonl"), (
            [tmp_path / "a.jsonl", tmp_path / "hard.jsonl"], r"hard.jsonl is the same file as .*a.jsonl"):
        with pytest.raises(SystemExit, match=rf"^error: .*{message}: its documents would be in the shards twice$"):
            fineweb.main(["--input", *map(str, twice), "--out-dir", str(tmp_path / "out"), "--workers", "1"])
    assert not (tmp_path / "out").exists()


def test_out_dir_problems_are_one_line(tmp_path, monkeypatch):
    """An out dir that is a file, lies under a file, or fills up: one line, no traceback."""
    (tmp_path / "a.txt").write_text("A short document.")
    (tmp_path / "file").write_text("")
    flags = ["--input", str(tmp_path / "a.txt"), "--workers", "1"]
    with pytest.raises(SystemExit, match=r"^error: --out-dir .*file is a file, not a folder$"):
        fineweb.main([*flags, "--out-dir", str(tmp_path / "file")])
    with pytest.raises(SystemExit, match=r"^error: cannot use --out-dir .*file/out: Not a directory$"):
        fineweb.main([*flags, "--out-dir", str(tmp_path / "file" / "out")])

    def disk_full(path, tokens):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(fineweb, "write_shard", disk_full)
    with pytest.raises(SystemExit, match=r"^error: cannot write to .*out: No space left on device$"):
        fineweb.main([*flags, "--out-dir", str(tmp_path / "out")])


def run_fineweb(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "fineweb.py"), *args], capture_output=True, text=True,
                          timeout=120)


def error_lines(stderr: str) -> list[str]:
    """stderr without tqdm's progress bar."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("tokenizing")]


@pytest.mark.slow
@pytest.mark.parametrize("content,workers,message", [
    ('{"text": "fine"}\n' * 50 + '{"text": ["a", "list"]}\n', "2", "{path}, line 51: 'text' is an array, not a string"),
    ('null\n{"text": "fine"}\n', "1", "{path}, line 1: null, not an object with a 'text' field"),
    (None, "1", "input file not found: {path}"),
], ids=["record parsed by a tokenizer process", "a null line", "missing file"])
def test_bad_input_cli_no_traceback(tmp_path, content, workers, message):
    """From the command line, bad input gives exactly one line on stderr, a non-zero exit, no traceback."""
    path = tmp_path / "a.jsonl"
    if content is not None:
        path.write_text(content)
    r = run_fineweb("--input", str(path), "--out-dir", str(tmp_path / "out"), "--workers", workers)
    assert r.returncode == 1, r.stderr
    assert error_lines(r.stderr) == ["error: " + message.format(path=path)]

@pytest.mark.parametrize("flags,message", [
    (["--shard-size", "0"], "--shard-size must be positive"),
    (["--workers", "-1"], "--workers must be positive"),
    (["--max-tokens", "-5"], "--max-tokens must be 0 (no limit) or positive"),
    (["--shard-size", str(2**31)], "--shard-size must be at most 2,147,483,647 (the header counts tokens in an int32)"),
    # a process each, with its own tokenizer: a thousand of them on a laptop used to be started, memory permitting
    (["--workers", str(4 * (os.cpu_count() or 1) + 1)], f"--workers {4 * (os.cpu_count() or 1) + 1} is more than 4 per "
                                                        f"CPU (this machine has {os.cpu_count() or 1}): give at most "
                                                        f"{4 * (os.cpu_count() or 1)}"),
])
def test_bad_flags_are_refused_before_any_work(tmp_path, capsys, flags, message):
    """A flag out of range is one argparse line (exit 2), before the out dir is made: a shard size past the
    header's int32 would otherwise fail deep in numpy, or write a header that lies."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        fineweb.main(["--input", "a.txt", "--out-dir", str(out), *flags])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("error: " + message)
    assert not out.exists()

# -----------------------------------------------------------------------------
# 3. hostile bytes, property-based

FAST = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def header(magic, version, n) -> bytes:
    h = np.zeros(HEADER_INTS, dtype=np.int32)
    h[:3] = (magic, version, n)
    return h.tobytes()


int32 = st.integers(-2**31, 2**31 - 1)
# text from a fixed alphabet (st.text() would build hypothesis' unicode tables first: seconds): ASCII, JSON's
# syntax and escapes, line ends, NUL, a BOM, a line separator, accents, CJK and an emoji
CHARS = "".join(map(chr, range(32, 127))) + "\t\n\r\x00\x1f\x7f\ufeff\u2028\u00e9\u00ff\u4e2d\U0001f600"
VALID = header(SHARD_MAGIC, SHARD_VERSION, 100) + np.arange(100, dtype=np.uint16).tobytes()
shard_like = st.one_of(
    st.binary(max_size=2 * HEADER_BYTES),  # anything
    st.builds(lambda n, body: header(SHARD_MAGIC, SHARD_VERSION, n) + body,  # a good header, any body
              st.one_of(st.integers(0, 600), int32), st.binary(max_size=1200)),
    st.builds(lambda m, v, n, body: header(m, v, n) + body,  # any header ints
              st.one_of(st.just(SHARD_MAGIC), int32), st.one_of(st.just(SHARD_VERSION), int32), int32,
              st.binary(max_size=200)),
    st.integers(0, len(VALID)).map(lambda k: VALID[:k]),  # a valid shard, truncated
    st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)).map(  # one byte of it changed
        lambda t: VALID[:t[0]] + bytes([t[1]]) + VALID[t[0] + 1:]),
)


@FAST
@given(data=shard_like)
def test_read_shard_hostile_bytes(tmp_path_factory, data):
    """read_shard on any bytes returns the tokens its header announces and its size holds, or raises ShardError."""
    path = tmp_path_factory.mktemp("shard") / "train_000001.bin"
    path.write_bytes(data)
    try:
        tokens = read_shard(str(path))
    except ShardError:
        return
    n = int(np.frombuffer(data[:12], dtype=np.int32)[2])
    assert len(data) == HEADER_BYTES + 2 * n == HEADER_BYTES + 2 * len(tokens)
    assert tokens.tobytes() == data[HEADER_BYTES:]
    del tokens  # unmap before the folder goes


def read_documents(tmp_path_factory, name: str, data: bytes) -> list[str] | None:
    """The documents of one file holding data (read and parsed in this process), or None where it raised InputError."""
    path = tmp_path_factory.mktemp("docs") / name
    path.write_bytes(data)
    try:
        docs = [t for item in fineweb.iter_work([str(path)]) for t in fineweb.item_texts(item)]
    except InputError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return None
    assert all(isinstance(d, str) for d in docs)
    return docs


@SLOW
@given(data=st.one_of(st.binary(max_size=300), st.text(CHARS, max_size=100).map(str.encode)))
def test_text_reader_hostile_bytes(tmp_path_factory, data):
    """A .txt of any bytes is one document (its UTF-8 text, line ends read as \\n, a leading byte order mark
    dropped) or an InputError naming it."""
    docs = read_documents(tmp_path_factory, "a.txt", data)
    if docs is not None:
        assert docs == [data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")]


@SLOW
@given(data=st.binary(max_size=300))
def test_jsonl_reader_hostile_bytes(tmp_path_factory, data):
    """A .jsonl of random bytes yields strings or raises InputError naming the file, nothing else."""
    read_documents(tmp_path_factory, "a.jsonl", data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(CHARS, max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(CHARS, max_size=5), children,
                                                                       max_size=3),
    max_leaves=6)
records = st.one_of(
    st.text(CHARS, max_size=40).map(lambda t: {"text": t}),  # good ones
    st.dictionaries(st.sampled_from(["text", "body", "id"]), json_values, max_size=3),  # maybe no or bad text
    json_values,  # not a record
)
raw_lines = st.text(CHARS.replace("\n", ""), max_size=20)  # json.dumps never writes a newline
jsonish_lines = st.lists(st.one_of(records.map(json.dumps), raw_lines, st.just("")), min_size=1, max_size=6)


@settings(SLOW, max_examples=60)
@given(lines=jsonish_lines)
def test_jsonl_reader_jsonish_lines(tmp_path_factory, lines):
    """JSON-ish lines: the texts of the records, in order, when every line is one (or blank); otherwise an
    InputError."""
    docs = read_documents(tmp_path_factory, "a.jsonl", "\n".join(lines).encode())
    records = []
    for line in lines:
        if line.strip(" \t\r"):  # not blank: JSON's whitespace only
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append(ValueError)
    valid = records and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in records)
    if valid:
        assert docs == [p["text"] for p in records]
    else:
        assert docs is None, f"{lines} gave {docs}"
