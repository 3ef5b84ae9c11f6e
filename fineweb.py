"""
Text -> GPT-2 token shards that train_gpt.py reads.

    python fineweb.py                              # FineWeb-Edu sample-10BT, streamed from the Hugging Face hub
    python fineweb.py --max-tokens 400000000       # the reference run's data: 100M val + 300M train tokens
    python fineweb.py --input notes.txt more/*.jsonl --shard-size 10000000   # your own text

Every document becomes <|endoftext|> followed by its tokens; documents are concatenated and cut into
shards of --shard-size tokens. The first shard is the validation split (val_000000.bin), the rest are
training data (train_000001.bin, ...). When the whole input is smaller than one shard, the first 10% of
its tokens become the val shard and the rest one train shard.

The shards, their format and how they are read: shards.py.

An interrupted run (Ctrl-C, a crash, kill -9) resumes when run again with the same arguments: after each
shard, fineweb_progress.json in the out dir records how far into the input the shards reach; the re-run
checks the shards already written, skips the documents they hold without tokenizing them again, and
writes the same bytes an uninterrupted run writes.
"""

import argparse
import itertools
import json
import logging
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

from atomic_write import atomic_write
from errors import one_line
from shards import MAX_SHARD_TOKENS, PROGRESS_FILE, SHARD_NAME, ShardError, list_shards, read_shard, shard_path, write_shard
from tokenizer import EOT, get_encoding

INPUT_TYPES = (".txt", ".jsonl", ".parquet")  # a .jsonl is parsed here; the others are read through `datasets`
FINEWEB_EDU = ("HuggingFaceFW/fineweb-edu", "sample-10BT")

PROGRESS_FORMAT = 1
TMP_FILE = re.compile(rf"({SHARD_NAME.pattern}|{re.escape(PROGRESS_FILE)})\.tmp")  # what a killed write leaves

# -----------------------------------------------------------------------------
# errors


class InputError(Exception):
    """Input that can't be sharded. An Exception, not SystemExit: it may be raised in the thread that
    feeds the worker pool, which passes on Exceptions only."""

# -----------------------------------------------------------------------------
# documents in


def check_inputs(paths: list[str]) -> None:
    """Refuse, before any work, input files that are missing, empty, of a type we don't read, or given twice."""
    seen = {}  # (device, inode) -> the path given: a glob and a name, a link and its target are the same file
    for path in paths:
        if os.path.isdir(path):
            raise SystemExit(f"error: {path} is a folder: give the files in it, e.g. {path}/*.jsonl")
        if not os.path.isfile(path):
            raise SystemExit(f"error: input file not found: {path}")
        if os.path.splitext(path)[1].lower() not in INPUT_TYPES:
            raise SystemExit(f"error: {path}: input files must be .txt, .jsonl or .parquet")
        if os.path.getsize(path) == 0:
            raise SystemExit(f"error: {path} is empty")
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)  # (a hard link, or another case of the name on macOS, is the same file too)
        if key in seen:
            what = "given twice" if seen[key] == path else f"the same file as {seen[key]}"
            raise SystemExit(f"error: {path} is {what}: its documents would be in the shards twice")
        seen[key] = path


JSONL_BLOCK = 1 << 20  # a .jsonl goes to the workers in blocks of whole lines, about this many bytes each
TEXTS_PER_ITEM = 64  # documents read through `datasets` go to the workers in lists of this many
JSON_SPACE = b" \t\r\n"  # JSON's whitespace: a .jsonl line of only these is blank, and skipped


def iter_work(inputs: list[str] | None) -> Iterator[tuple]:
    """The input as work items for tokenize_work, in order: (path, first line number, bytes) for a block of
    whole lines of a .jsonl, parsed by the workers (parsing JSON in the one process that reads would hold
    the tokenizers back); (path, None, [text, ...]) for documents read through `datasets`: FineWeb-Edu from
    the hub (path None), a .txt (one document) or a .parquet (a document per row).

    A local file that can't be read as such raises InputError, one line naming the file (and the line):
    here, or where the item is parsed.
    """
    if not inputs:
        yield from _batches(None, _hub_texts())
        return
    for path in inputs:
        if path.lower().endswith(".jsonl"):
            yield from _jsonl_blocks(path)
        else:
            yield from _batches(path, _file_documents(path))


def item_texts(item: tuple) -> list[str]:
    """The texts of a work item's documents (a resumed run's first item may drop some: its 4th field)."""
    path, first_line, data = item[:3]
    texts = _parse_jsonl(path, first_line, data) if isinstance(data, bytes) else data
    return texts[item[3]:] if len(item) > 3 else texts


def tokenize_work(item: tuple) -> list[np.ndarray]:
    """One work item -> the tokens of each of its documents. Runs in the worker processes."""
    return [tokenize(text) for text in item_texts(item)]


def skip_documents(work: Iterator[tuple], skip: int) -> Iterator[tuple]:
    """The work without its first `skip` documents, which a resumed run has: items wholly among them are
    dropped unparsed, and the item where they end gets a 4th field, how many of its documents to drop."""
    for item in work:
        if skip:
            data = item[2]
            n = len(data) if isinstance(data, list) else sum(1 for line in data.split(b"\n") if line.strip(JSON_SPACE))
            if n <= skip:
                skip -= n
                continue
            item, skip = (*item, skip), 0
        yield item


class Throttle:
    """Lets the reading run at most `limit` work items ahead of the shard writing. Pool.imap takes items as
    fast as its input gives them: a reader faster than the tokenizers would otherwise queue the whole input
    in memory."""

    def __init__(self, work: Iterator[tuple], limit: int):
        self.work, self.room, self.stopped = work, threading.Semaphore(limit), False

    def __iter__(self) -> Iterator[tuple]:  # in the pool's feeder thread
        for item in self.work:
            self.room.acquire()
            if self.stopped:
                return
            yield item

    def documents(self, results: Iterator[list[np.ndarray]]) -> Iterator[np.ndarray]:
        for tokens in results:
            self.room.release()
            yield from tokens

    def stop(self) -> None:
        """Lets the feeder thread end (Pool.terminate waits for it)."""
        self.stopped = True
        self.room.release()


def _hub_texts() -> Iterator[str]:
    from datasets import load_dataset
    try:
        ds = load_dataset(FINEWEB_EDU[0], name=FINEWEB_EDU[1], split="train", streaming=True)
        for row in ds:
            yield row["text"]
    except (ConnectionError, OSError) as e:
        # datasets raises ConnectionError (or an OSError subclass) when the hub can't be reached
        raise InputError(f"cannot reach the Hugging Face hub for FineWeb-Edu ({type(e).__name__}); "
                         "shard local files with --input FILE [FILE ...]") from None


def _batches(path: str | None, texts: Iterator[str]) -> Iterator[tuple]:
    while batch := list(itertools.islice(texts, TEXTS_PER_ITEM)):
        yield path, None, batch


def _jsonl_blocks(path: str) -> Iterator[tuple]:
    """(path, the number of its first line, whole lines as bytes) for each block of about JSONL_BLOCK bytes."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
    with f:
        buf = f.read(JSONL_BLOCK).removeprefix(b"\xef\xbb\xbf")  # a byte order mark, as some editors write
        if buf.lstrip(JSON_SPACE).startswith(b"["):
            raise InputError(f"{path} holds a JSON array, not JSON lines (one object with a 'text' field per line)")
        line, anything = 1, False
        while buf:
            more = f.read(JSONL_BLOCK)
            if more:
                buf += more
                cut = buf.rfind(b"\n") + 1
                if not cut:
                    continue  # a line longer than a block: read on
                block, buf = buf[:cut], buf[cut:]
            else:
                block, buf = buf, b""
            anything = anything or bool(block.translate(None, JSON_SPACE))
            yield path, line, block
            line += block.count(b"\n")
    if not anything:
        raise InputError(f"{path} holds no documents")


def _parse_jsonl(path: str, first_line: int, block: bytes) -> list[str]:
    """The texts of a block of .jsonl lines; InputError naming the first line that isn't a record with text."""
    texts = []
    for i, raw in enumerate(block.split(b"\n"), first_line):
        if not raw.strip(JSON_SPACE):
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"{path}, line {i}: not UTF-8") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{path}, line {i}: not JSON ({e.msg} at column {e.colno})") from None
        except (ValueError, RecursionError):
            raise InputError(f"{path}, line {i}: not JSON") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}, line {i}: {_json_type(record)}, not an object with a 'text' field")
        if "text" not in record:
            raise InputError(f"{path}, line {i}: no 'text' field")
        if not isinstance(record["text"], str):
            raise InputError(f"{path}, line {i}: 'text' is {_json_type(record['text'])}, not a string")
        texts.append(record["text"])
    return texts


def _file_documents(path: str) -> Iterator[str]:
    """The documents of a .txt (one document) or a .parquet file (one per row), read through `datasets`."""
    import datasets  # heavy (a second or more): imported only by the code that needs it
    datasets.logging.set_verbosity(logging.CRITICAL)  # it logs the read errors we report in one line below
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False  # else each load_dataset() of a local file pings the hub
    builder = "text" if path.lower().endswith(".txt") else "parquet"  # the `datasets` builder that reads it
    kwargs = {"sample_by": "document", "encoding": _text_encoding(path)} if builder == "text" else {}
    n = 0
    try:
        ds = datasets.load_dataset(builder, data_files=[path], split="train", streaming=True, **kwargs)
        for row in ds:
            n += 1
            text = row.get("text")
            if not isinstance(text, str):
                raise InputError(_bad_record(path, builder, n, row))
            if builder == "text" and "\x00" in text:
                raise InputError(f"{path} holds NUL bytes: a binary file, or text that is not UTF-8 (UTF-16?)")
            yield text
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 -- whatever `datasets` or pyarrow raise, the user needs the file's name
        raise InputError(_unreadable(path, builder, e)) from None
    if n == 0:
        raise InputError(f"{path} holds no documents")


def _text_encoding(path: str) -> str:
    """utf-8-sig for a .txt that starts with a byte order mark (as some editors write: not text, as in a .jsonl),
    else utf-8. Not utf-8-sig for all: its decoder drops the first bytes of a mark cut short (a file of b"\xef"
    reads as ""), where utf-8 reports them as the bytes that are not UTF-8."""
    try:
        with open(path, "rb") as f:
            return "utf-8-sig" if f.read(3) == b"\xef\xbb\xbf" else "utf-8"
    except OSError:
        return "utf-8"  # `datasets` opens it next, and its error names the file


def _bad_record(path: str, builder: str, n: int, row: dict) -> str:
    """The message for the n-th row of a parquet file, whose 'text' is missing or not a string."""
    if "text" not in row:
        return f"{path}: row {n} has no 'text' column (it has: {', '.join(map(str, row)) or 'nothing'})"
    return f"{path}: row {n}: 'text' is {_json_type(row['text'])}, not a string"


def _unreadable(path: str, builder: str, e: Exception) -> str:
    """The message for a file `datasets` failed to read, from what it raised."""
    if isinstance(e, OSError) and e.filename:  # e.g. the datasets cache folder can't be written
        return f"{path}: cannot read it ({e.strerror or type(e).__name__}: {e.filename})"
    if builder == "text" and isinstance(e, UnicodeDecodeError):
        where = ""
        try:
            with open(path, "rb") as f:  # the decoder may have seen a chunk: find the offset in the whole file
                f.read().decode("utf-8")
        except UnicodeDecodeError as full:
            where = f": byte {full.start:,} is 0x{full.object[full.start]:02x}"
        except OSError:
            pass
        return f"{path} is not UTF-8 text{where} (a binary file, or another encoding?)"
    if builder == "parquet":
        try:
            import pyarrow.parquet as pq
            if pq.read_metadata(path).num_rows == 0:  # datasets fails on it with an obscure message
                return f"{path} holds no documents"
        except Exception:  # noqa: BLE001 -- not parquet at all: `e` says why
            pass
    what = {"parquet": "a parquet file", "text": "UTF-8 text"}[builder]
    return f"{path}: cannot read it as {what} ({one_line(e, whole=True, limit=300)})"


def _json_type(value) -> str:
    if value is None:
        return "null"
    for types, name in ((bool, "a boolean"), ((int, float), "a number"), (dict, "an object"),
                        ((list, tuple), "an array"), (str, "a string")):
        if isinstance(value, types):
            return name
    return f"a {type(value).__name__}"


def tokenize(text: str) -> np.ndarray:
    """One document -> uint16 tokens, the <|endoftext|> delimiter first."""
    tokens = [EOT] + get_encoding().encode_ordinary(text)
    return np.array(tokens, dtype=np.uint16)  # every GPT-2 id is < 2**16

# -----------------------------------------------------------------------------
# shards out, and the progress manifest that lets an interrupted run resume


class ShardWriter:
    """Collects the tokens of documents and writes a shard each time --shard-size of them are in.

    After each shard it rewrites the progress manifest (atomically): the job's fingerprint and, per shard,
    where the shards end in the input -- `docs` documents wholly in the shards so far, plus the first
    `skip` tokens of the next one (a document may straddle shards) -- and `total` tokens so far.
    A re-run resumes after the last shard: it skips `docs` documents and the `skip` tokens.
    """

    def __init__(self, out_dir: str, shard_size: int, job: dict, done: list[dict] | None = None):
        self.out_dir, self.shard_size, self.job = out_dir, shard_size, job
        self.buf = np.empty(shard_size, dtype=np.uint16)
        self.fill = 0  # tokens in buf
        self.shards = list(done or [])  # the manifest's entry of each shard written, in order
        last = self.shards[-1] if self.shards else {"docs": 0, "skip": 0, "total": 0}
        self.index = len(self.shards)  # index of the shard being filled; 0 is the val shard
        self.docs, self.doc_pos = last["docs"], last["skip"]  # documents done, tokens of the next one done
        self.total = last["total"]  # tokens added, in shards or in buf

    @property
    def written(self) -> list[str]:
        return [os.path.join(self.out_dir, s["file"]) for s in self.shards]

    def add(self, tokens: np.ndarray) -> None:
        """The tokens of the next document (on resume: the rest of the first one)."""
        while len(tokens):
            if self.fill == self.shard_size:
                # written only now that more tokens follow: input of exactly one shard is split in close()
                self._write(self.buf)
            n = min(len(tokens), self.shard_size - self.fill)  # a document may straddle two shards
            self.buf[self.fill:self.fill + n] = tokens[:n]
            self.fill += n
            self.total += n
            self.doc_pos += n
            tokens = tokens[n:]
            if not len(tokens):
                self.docs, self.doc_pos = self.docs + 1, 0

    def _write(self, tokens: np.ndarray, resumable: bool = True) -> None:
        path = shard_path(self.out_dir, "val" if self.index == 0 else "train", self.index)
        write_shard(path, tokens)
        total = (self.shards[-1]["total"] if self.shards else 0) + len(tokens)
        self.shards.append({"file": os.path.basename(path), "tokens": len(tokens), "total": total,
                            "docs": self.docs if resumable else None, "skip": self.doc_pos if resumable else None})
        self.index += 1
        self.fill = 0
        self.save()

    def close(self) -> None:
        if self.index == 0 and self.fill > 0:
            # all the input fits in one shard: keep 10% for val so there is something to train on. Decided only
            # now, so the val shard is no resume point: a run killed before the train shard starts over.
            n_val = max(1, self.fill // 10)
            print(f"the input has only {self.fill:,} tokens, not more than one shard: "
                  f"{n_val:,} go to val, {self.fill - n_val:,} to train")
            rest = self.buf[n_val:self.fill].copy()
            self._write(self.buf[:n_val], resumable=False)
            self.fill = len(rest)
            self.buf[:len(rest)] = rest
        if self.fill > 0:
            self._write(self.buf[:self.fill])
        self.save(complete=True)

    def save(self, complete: bool = False) -> None:
        manifest = {"format": PROGRESS_FORMAT, "job": self.job, "shards": self.shards, "complete": complete}
        with atomic_write(os.path.join(self.out_dir, PROGRESS_FILE)) as tmp, open(tmp, "wb") as f:
            f.write(json.dumps(manifest, indent=1).encode())


def job_fingerprint(args: argparse.Namespace) -> dict:
    """What determines the shards' bytes: the input (files with their size and mtime, or the hub dataset),
    --shard-size and --max-tokens. Not --workers: the shards are the same for any number."""
    if args.input:
        source = []
        for path in args.input:
            st = os.stat(path)
            source.append({"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    else:
        source = "/".join(FINEWEB_EDU)
    return {"input": source, "shard_size": args.shard_size, "max_tokens": args.max_tokens}


def _job_difference(old: dict, new: dict) -> str:
    for key in ("shard_size", "max_tokens"):
        if old.get(key) != new[key]:
            return f"made with --{key.replace('_', '-')} {old.get(key)}"
    old_in, new_in = old.get("input"), new["input"]
    if isinstance(old_in, list) and isinstance(new_in, list) and [i.get("path") for i in old_in] == [
            i["path"] for i in new_in]:
        changed = next((i["path"] for i, j in zip(new_in, old_in) if i != j), "an input")
        return f"{changed} has changed since"
    return "made from other input"


def read_progress(out_dir: str) -> dict | None:
    """The progress manifest in out_dir, None where there is none; ValueError where it is damaged."""
    path = os.path.join(out_dir, PROGRESS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        manifest = json.load(f)  # json.JSONDecodeError is a ValueError

    def entry_ok(e) -> bool:
        return (isinstance(e, dict) and isinstance(e.get("file"), str) and SHARD_NAME.fullmatch(e["file"])
                and all(type(e.get(k)) is int for k in ("tokens", "total"))
                and all(k in e and (e[k] is None or type(e[k]) is int) for k in ("docs", "skip")))
    if not (isinstance(manifest, dict) and manifest.get("format") == PROGRESS_FORMAT and "job" in manifest
            and isinstance(manifest.get("shards"), list) and all(map(entry_ok, manifest["shards"]))):
        raise ValueError(f"{path} is not a progress manifest of this version")
    return manifest


def resume_point(out_dir: str, job: dict) -> tuple[list[dict], bool]:
    """The manifest entries of the shards in out_dir this job can keep, and whether the job is complete.

    Refuses (SystemExit) an out dir holding shards of another job: they are never overwritten.
    """
    for name in os.listdir(out_dir):
        if TMP_FILE.fullmatch(name):
            os.remove(os.path.join(out_dir, name))  # a write that was killed half-way
    on_disk = [os.path.basename(p) for p in list_shards(out_dir, "val") + list_shards(out_dir, "train")]
    try:
        manifest = read_progress(out_dir)
        if manifest is None:  # it is written before the first shard: shards without one are not this job's
            problem = f"already holds shards ({', '.join(on_disk[:2])}, ...) that fineweb.py did not record"
        elif manifest["job"] != job:
            problem = f"holds the shards of another job ({_job_difference(manifest['job'], job)})"
        else:
            problem = None
    except ValueError:
        problem = f"holds shards and a damaged {PROGRESS_FILE}"
    if problem and on_disk:
        raise SystemExit(f"error: {out_dir} {problem}: delete them or choose another --out-dir")
    if problem:
        return [], False  # no shards to lose: start (over)
    entries, complete = manifest["shards"], manifest.get("complete") is True
    keep = []
    for e in entries:  # keep the shards, in order, up to the first one missing or damaged
        try:
            ok = len(read_shard(os.path.join(out_dir, e["file"]))) == e["tokens"]
        except ShardError:
            ok = False
        if not ok:
            print(f"{e['file']} is missing or damaged: writing it again, and the shards after it")
            break
        keep.append(e)
    if complete and len(keep) == len(entries):
        return keep, True
    while keep and keep[-1]["docs"] is None:  # the val shard of an input smaller than one shard: start over
        keep.pop()
    return keep, False

# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", action="extend", metavar="FILE",  # extend: --input a --input b reads both
                   help="local .txt, .jsonl (field 'text') or .parquet files (default: FineWeb-Edu from the hub)")
    p.add_argument("--out-dir", default="edu_fineweb10B",
                   help="where the shards go; a re-run with the same arguments resumes there (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=100_000_000, help="tokens per shard (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=0, help="stop after this many tokens (0: all the input)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="tokenizer processes; the output is the same for any number (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("shard_size", "workers"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.shard_size > MAX_SHARD_TOKENS:
        p.error(f"--shard-size must be at most {MAX_SHARD_TOKENS:,} (the header counts tokens in an int32)")
    if args.max_tokens < 0:
        p.error("--max-tokens must be 0 (no limit) or positive")
    cpus = os.cpu_count() or 1
    if args.workers > 4 * cpus:  # each is a process with its own tokenizer: past the CPUs they only cost memory
        p.error(f"--workers {args.workers} is more than 4 per CPU (this machine has {cpus}): give at most {4 * cpus}")
    return args


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    if args.input:
        check_inputs(args.input)
    get_encoding()  # fail early (and once) if the BPE files are missing
    job = job_fingerprint(args)
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise SystemExit(f"error: --out-dir {args.out_dir} is a file, not a folder")
    made = not os.path.exists(args.out_dir)  # by this run: removed again if the input is refused before any shard
    try:
        os.makedirs(args.out_dir, exist_ok=True)
        done, complete = resume_point(args.out_dir, job)
    except OSError as e:
        raise SystemExit(f"error: cannot use --out-dir {args.out_dir}: {e.strerror}") from None
    writer = ShardWriter(args.out_dir, args.shard_size, job, done)
    if complete:
        print(f"nothing to do: {args.out_dir} already holds this job's {writer.total:,} tokens "
              f"in {len(done)} shards")
        _warn_stale(args.out_dir, writer.written)
        return writer.written
    if done:
        print(f"resuming: {len(done)} shards ({writer.total:,} tokens) are already in {args.out_dir}; "
              f"skipping the {writer.docs:,} documents they hold")
    bar = tqdm(total=args.max_tokens or None, initial=writer.total, unit=" tokens", unit_scale=True,
               desc="tokenizing")
    pool = work = None
    try:
        writer.save()  # before any shard: shards without a manifest are not this job's. Checks out_dir is writable
        if not (args.max_tokens and writer.total >= args.max_tokens):
            # the documents done are read, not tokenized
            work = Throttle(skip_documents(iter_work(args.input), writer.docs), limit=4 * args.workers)
            pool = mp.Pool(args.workers, initializer=_ignore_sigint) if args.workers > 1 else None
            # imap keeps the items' order, so the shards are the same whatever the number of workers
            token_stream = work.documents(pool.imap(tokenize_work, work) if pool else map(tokenize_work, work))
            skip = writer.doc_pos  # tokens of the first document already in the last shard
            for tokens in token_stream:
                tokens, skip = tokens[skip:], 0
                if args.max_tokens:
                    tokens = tokens[:args.max_tokens - writer.total]
                writer.add(tokens)
                bar.update(len(tokens))
                if args.max_tokens and writer.total >= args.max_tokens:
                    break
        if writer.total == 0:
            raise InputError("the input holds no text")
        writer.close()
    except InputError as e:
        if made and not writer.shards:  # a folder with a manifest alone would look like shards to come
            _remove_empty(args.out_dir)
        raise SystemExit(f"error: {e}") from None
    except OSError as e:  # the documents' own errors are InputErrors: this is the out dir
        raise SystemExit(f"error: cannot write to {args.out_dir}: {e.strerror or e}") from None
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted after {len(writer.shards)} shards: run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        bar.close()
        if work:
            work.stop()
        if pool:
            pool.terminate()
    print(f"wrote {writer.total:,} tokens in {len(writer.shards)} shards to {args.out_dir}")
    _warn_small_train(writer.shards)
    _warn_stale(args.out_dir, writer.written)
    return writer.written


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which stops the pool


def _remove_empty(out_dir: str) -> None:
    """Remove the manifest, then out_dir if that leaves it empty."""
    try:
        os.remove(os.path.join(out_dir, PROGRESS_FILE))
        os.rmdir(out_dir)  # fails, and is left, if anything else is in it
    except OSError:
        pass


def _warn_small_train(shards: list[dict]) -> None:
    """Input a little over one shard leaves most of it in val, which training only samples: say so. Input too
    small to split (a token) leaves nothing to train on."""
    val, total = shards[0]["tokens"], shards[-1]["total"]
    if len(shards) == 1:
        print(f"warning: all {total:,} tokens went to the val shard (the first shard is val): train_gpt.py needs "
              "train shards too: give more text", file=sys.stderr)
    elif total - val < val:
        print(f"warning: the val shard holds {val:,} of the {total:,} tokens, train only {total - val:,}: to "
              f"train on more of them, shard again with a smaller --shard-size (e.g. {total // 10}) into another "
              f"--out-dir", file=sys.stderr)


def _warn_stale(out_dir: str, written: list[str]) -> None:
    stale = sorted(set(list_shards(out_dir, "val") + list_shards(out_dir, "train")) - set(written))
    if stale:
        print(f"warning: {out_dir} also holds {len(stale)} shards that are not this job's "
              f"(e.g. {os.path.basename(stale[0])}): remove them, or train_gpt.py will read them too",
              file=sys.stderr)


if __name__ == "__main__":
    # `datasets` imports torch when it is installed (3 s) only to share a counter with DataLoader workers
    os.environ.setdefault("USE_TORCH", "0")
    main()
