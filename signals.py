"""
Stopping a run cleanly: Ctrl-C (SIGINT) or a job scheduler's SIGTERM asks the training loop to stop after
the step it is in, with a checkpoint, so that --resume continues it as if it had never stopped.

    with StopSignals() as signals:
        for step in ...:
            if signals.stop(device):   # every process of a run stops at the same step
                ...                    # write a checkpoint, then leave the loop
"""

import os
import signal
import sys
import threading
import time

from distributed import largest


class StopSignals:
    """SIGINT (Ctrl-C) or SIGTERM (a job scheduler's pre-emption) asks the loop to stop after the step it is
    in, with a checkpoint. A second SIGINT exits at once: the checkpoints on disk are always complete. Under
    torchrun a signal within a second of the first is taken for torchrun's forwarded copy, and ignored."""

    def __init__(self):
        self.received: int | None = None
        self._first_at = 0.0  # when the first signal came (time.monotonic())
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers; the default ones stay
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        # under torchrun one Ctrl-C reaches each process twice: from the terminal, and forwarded by torchrun a
        # moment later. That copy is not a second Ctrl-C, or the run would exit without its checkpoint
        if self.received is not None and "RANK" in os.environ and time.monotonic() - self._first_at < 1.0:
            return
        if self.received is not None and signum == signal.SIGINT:
            print("\nsecond interrupt: exiting now, without a checkpoint of this step", file=sys.stderr, flush=True)
            os._exit(130)
        self.received, self._first_at = signum, time.monotonic()
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              "(Ctrl-C again to exit at once)", file=sys.stderr, flush=True)

    def stop(self, device: str) -> bool:
        """Whether to stop now; under torchrun, every process stops at the same step if any one got a signal,
        and takes it as its own (SIGTERM if one got it): all log the same and exit with the same status."""
        agreed = largest(self.received or 0, device)  # the largest number: SIGTERM (15) over SIGINT (2)
        if agreed:
            self.received = agreed
        return bool(agreed)

    @property
    def name(self) -> str:
        return signal.Signals(self.received or signal.SIGTERM).name
