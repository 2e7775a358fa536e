"""Progress on the terminal: a byte bar across concurrent transfers (with files done of total) and a
counter of files checked; a tqdm line redrawn in place on a terminal, plain lines every few seconds
otherwise. Sizes in the same 1024-based units as every summary (``format_size``)."""

import contextlib
import multiprocessing
import sys
import threading
import time
from collections.abc import Iterator

from amsrepomirror.util.units import format_size, plural


def _tqdm():
    """tqdm's bar, imported for a terminal only: a run under cron or a pipe never draws one, and importing tqdm
    (with its version lookup) is a tenth of the fixed cost of a run (docs/benchmarks.md, start-up)."""
    # Here, not at the top: see above.
    from tqdm import tqdm
    return tqdm


#: How often a terminal bar is redrawn even when no byte arrived (connections busy, server slow).
REDRAW_SECONDS = 1.0


class _Discard:
    """Where progress goes with --quiet: nowhere (not a terminal, so no bar is drawn either)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


_quiet = False


def quiet(on: bool) -> None:
    """--quiet: no bar, counter or progress line from here on (the cli sets it for each command line)."""
    global _quiet
    _quiet = on


def _stream(given):
    """The stream progress is drawn on: the one given, else stderr; with --quiet, nowhere."""
    return _Discard() if _quiet else given or sys.stderr


class ByteProgress:
    """Thread-safe progress over a known number of bytes (and, when given, files)."""

    def __init__(self, total: int | None, desc: str, stream=None, interval: float = 5.0, files: int = 0,
                 done: int = 0, files_done: int = 0):
        """``total`` None: not known yet; nothing is shown until :meth:`set_total`. ``done``, ``files_done``: what
        was done before this process started (a shared run joined late): counted, but not in the rate."""
        self.stream = _stream(stream)
        self.desc, self.interval = desc, interval
        self.files_total, self.files_done = files, files_done
        self.done = self.done_before = done
        self.total = total or 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_line = 0.0
        self._bar = None
        self._shown = False
        self._closed = threading.Event()
        if total is not None:
            self._start()

    def _start(self) -> None:
        self._shown = True
        if self.stream.isatty():
            _OPEN.add(self)
            self._bar = _tqdm()(total=self.total, initial=self.done, desc=self._status(), file=self.stream, dynamic_ncols=True,
                             bar_format="{desc} {percentage:3.0f}%|{bar}|")
            threading.Thread(target=self._redraw, name="amsrepomirror-progress", daemon=True).start()
        else:
            self._line(force=True)

    def update(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.done > self.total and self._shown:  # more than planned (a file fetched again): never "x of less"
                self.total = self.done
                if self._bar is not None:
                    self._bar.total = self.total
            if self._bar is not None:
                self._bar.set_description_str(self._status(), refresh=False)
                self._bar.update(n)  # redraws at most every mininterval
            elif self._shown:
                self._line()

    def set_total(self, total: int) -> None:
        """The total, once known (after ``total`` None): the bar starts here."""
        with self._lock:
            self.total = total
            self._start()

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1
            self.files_total = max(self.files_total, self.files_done) if self.files_total else 0

    def _status(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (self.done - self.done_before) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 and self.total > self.done else 0
        files = f", {self.files_done:,} of {self.files_total:,} file{plural(self.files_total)}" if self.files_total else ""
        return (f"{self.desc}: {format_size(self.done)} of {format_size(self.total)}{files}, {format_size(rate)}/s, "
                + (f"ETA {eta:.0f} s" if rate > 0 else "starting"))

    def _redraw(self) -> None:
        while not self._closed.wait(REDRAW_SECONDS):
            with self._lock:
                if self._bar is not None:
                    self._bar.set_description_str(self._status(), refresh=True)

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_line < self.interval:
            return
        self._last_line = now
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(f"{self._status()} ({pct:.0f}%)", file=self.stream, flush=True)

    def close(self, clear: bool = False) -> None:
        """End the bar: its last state stays on the terminal, or (``clear``: interrupted) the line is wiped."""
        self._closed.set()
        with self._lock:
            if self._bar is not None:
                if clear:
                    self._bar.leave = False
                else:
                    self._bar.set_description_str(self._status(), refresh=False)
                self._bar.close()
                self._bar = None
            elif self.done and not clear and self._shown:
                self._line(force=True)
        _OPEN.discard(self)


class CountProgress:
    """``checking 8,025 files: 3,100 done``: redrawn in place on a terminal, a line every
    ``interval`` seconds otherwise (a quick run prints nothing)."""

    def __init__(self, total: int, what: str, stream=None, interval: float = 5.0):
        self.stream = _stream(stream)
        self.desc = f"{what} {total:,} file{plural(total)}"
        self.total, self.interval = total, interval
        self.done = 0
        self._lock = threading.Lock()
        self._last_line = time.monotonic()
        self._bar = None
        if self.stream.isatty():
            self._bar = _tqdm()(total=total, desc=self.desc, file=self.stream, dynamic_ncols=True, leave=False,
                             bar_format="{desc}: {n:,} done")
            _OPEN.add(self)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
            elif time.monotonic() - self._last_line >= self.interval:
                self._last_line = time.monotonic()
                print(f"{self.desc}: {self.done:,} done", file=self.stream, flush=True)

    def close(self, clear: bool = True) -> None:
        """Wipe the counter's line (it only matters while it counts)."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()  # leave=False: the line is wiped
                self._bar = None
        _OPEN.discard(self)


_RUNS: dict[str, ByteProgress] = {}
_OPEN: set = set()  # bars and counters shown on a terminal now


def for_run(run_id: str, total: int = 0, desc: str = "download", files: int = 0, done: int = 0,
            files_done: int = 0) -> ByteProgress:
    """The progress of a run, shared by every download batch in this process (``done``, ``files_done``: what the
    run had done before, in a shared run joined late)."""
    if run_id not in _RUNS:
        _RUNS[run_id] = ByteProgress(total, desc, files=files, done=done, files_done=files_done)
    return _RUNS[run_id]


def close_run(run_id: str) -> ByteProgress | None:
    bar = _RUNS.pop(run_id, None)
    if bar is not None:
        bar.close()
    return bar


def clear_all() -> None:
    """Wipe every bar and counter still shown (Ctrl-C), so the next line starts on a clean line."""
    _RUNS.clear()
    for shown in list(_OPEN):
        shown.close(clear=True)


class SharedBytes:
    """Byte counters in shared memory: a Luigi build with several workers runs each task in a forked
    process, so the processes that pack add to these and the one that started the build draws the bar."""

    def __init__(self):
        self.total = multiprocessing.Value("q", 0)
        self.done = multiprocessing.Value("q", 0)

    def set_total(self, n: int) -> None:
        with self.total.get_lock():
            self.total.value = n

    def add_done(self, n: int) -> None:
        with self.done.get_lock():
            self.done.value += n


_SHARED: SharedBytes | None = None


def shared_total(n: int) -> None:
    """The whole job's bytes, from whichever process plans it (no bar is drawn: nothing happens)."""
    if _SHARED is not None:
        _SHARED.set_total(n)


def shared_done(n: int) -> None:
    """``n`` more bytes of the job done, from any process forked after :func:`shared_bar` began."""
    if _SHARED is not None:
        _SHARED.add_done(n)


@contextlib.contextmanager
def shared_bar(desc: str, stream=None) -> Iterator[None]:
    """One byte bar over work done by forked worker processes, drawn on a terminal only (elsewhere
    the per-chunk log lines say as much); it starts once a process has given the total."""
    global _SHARED
    stream = _stream(stream)
    if not stream.isatty():
        yield
        return
    _SHARED = counters = SharedBytes()
    stop = threading.Event()
    state = {"bar": None, "shown": 0}

    def feed() -> None:
        total, done = counters.total.value, counters.done.value
        if total and state["bar"] is None:
            state["bar"] = ByteProgress(total, desc, stream=stream)
        if state["bar"] is not None and done > state["shown"]:
            state["bar"].update(done - state["shown"])
            state["shown"] = done

    def draw() -> None:
        while not stop.wait(0.5):
            feed()

    drawer = threading.Thread(target=draw, name="amsrepomirror-shared-progress", daemon=True)
    drawer.start()
    try:
        yield
    finally:
        stop.set()
        drawer.join()
        _SHARED = None
        feed()
        if state["bar"] is not None:
            state["bar"].close()
