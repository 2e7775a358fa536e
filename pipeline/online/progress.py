"""One byte counter across concurrent transfers: a tqdm bar on a terminal, plain lines otherwise."""

import sys
import threading
import time
from typing import Dict, Optional

from tqdm import tqdm

from amsrepomirror.util.units import format_size


class ByteProgress:
    """Thread-safe progress over a known number of bytes."""

    def __init__(self, total: int, desc: str, stream=None, interval: float = 5.0):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.interval = total, desc, interval
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_line = 0.0
        self._bar = None
        if self.stream.isatty():
            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                             file=self.stream, dynamic_ncols=True, smoothing=0.1)
        else:
            self._line(force=True)

    def update(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
            else:
                self._line()

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_line < self.interval:
            return
        self._last_line = now
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 and self.total > self.done else 0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_text = f"ETA {eta:.0f} s" if rate > 0 else "starting"
        print(f"{self.desc}: {format_size(self.done)} of {format_size(self.total)} ({pct:.0f}%), "
              f"{format_size(rate)}/s, {eta_text}", file=self.stream, flush=True)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            elif self.done:
                self._line(force=True)


_RUNS: Dict[str, ByteProgress] = {}


def for_run(run_id: str, total: int = 0, desc: str = "download") -> ByteProgress:
    """The progress of a run, shared by every download batch in this process."""
    if run_id not in _RUNS:
        _RUNS[run_id] = ByteProgress(total, desc)
    return _RUNS[run_id]


def close_run(run_id: str) -> Optional[ByteProgress]:
    bar = _RUNS.pop(run_id, None)
    if bar is not None:
        bar.close()
    return bar
