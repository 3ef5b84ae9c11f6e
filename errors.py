"""
The one line a user sees when something fails outside our own code (torch, transformers, datasets, the OS).

Their exceptions can span many lines, or bury the reason in a chain of causes. A script turns them into a
single line, exit status 1 and no traceback:

    from errors import one_line
    raise SystemExit(f"error: cannot load --model {name}: {one_line(e)}") from None
"""


def one_line(e: BaseException, whole: bool = False, limit: int | None = None) -> str:
    """The first non-blank line of an exception's message (whole: all its lines joined, for libraries such as
    pyarrow that spread one reason over several), cut to `limit` characters; its type's name if it is empty."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = " ".join(" ".join(lines).split()) if whole else next(iter(lines), "")
    return text[:limit] or type(e).__name__


def os_reason(e: BaseException) -> str:
    """The operating system's words for a failed read or write ("No space left on device"), wherever they
    sit in the exception's chain: torch.save and safetensors wrap the OSError in a RuntimeError of their own."""
    cause = e
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return f"write failed ({type(e).__name__})"
