"""What a person running toolace-r sees on the terminal, and where everything else goes.

Terminal (stderr): toolace_r's own log lines — stage headers, one summary line per stage — and one progress bar
per stage (probe: samples, train: optimizer steps, eval: items), each with its rate and ETA. On a stream that is
not a terminal (CI, `> file`, `| tee`) a bar becomes a plain line every 10 % or 30 s instead of thousands of
carriage returns. stdout: what a command answers (the summary table of `toolace-r run`).

RUN_DIR/logs/ (`log_to_dir`, `route_worker_logs`; called by ray_session.start_or_join when it starts Ray):
  driver.log   every log record of the driver process: toolace_r, libraries, Python warnings
  ray.log      Ray's driver-side loggers: Ray start-up, Ray Data execution plans and progress reports, Ray Train
  workers.log  stdout/stderr of every Ray worker process — training workers' step lines, DeepSpeed, Ray Train's
               report/checkpoint lines, actor output — which Ray would otherwise print on the terminal

`Progress` is the bar; `watch` polls a progress source (a file a worker writes, the files a write produces) from a
thread while the driver blocks in Ray.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("toolace_r.progress")

CONSOLE_FORMAT = "%(asctime)s %(message)s"
CONSOLE_DATEFMT = "%H:%M:%S"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DRIVER_LOG, RAY_LOG, WORKERS_LOG, NATIVE_LOG = "driver.log", "ray.log", "workers.log", "native_stderr.log"
_WORKER_HANDLER = "toolace_r_worker_logs"
# Loggers of libraries that install their own console handlers in the driver; log_to_dir sends them to files.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")
LIBRARY_LOGGERS = ("DeepSpeed", "transformers", "torch", "datasets", "accelerate", "urllib3", "filelock")

_lock = threading.Lock()
_state: dict[str, Any] = {"log_dir": None, "file_handlers": [], "workers_file": None, "native": None}


# ------------------------------------------------------------------------------------------------ console logging
class ConsoleHandler(logging.Handler):
    """toolace_r's log lines on stderr, written through tqdm so that a progress bar stays below them. The stream is
    looked up at each record (pytest and other callers swap sys.stderr). A record with `extra={"console": False}`
    goes to the files only."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "console", True) is False:
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(level: str = "INFO") -> None:
    """The console of a toolace-r command: toolace_r's records at `level` on stderr (short format); other libraries'
    records reach the console only as Python's last resort (warnings and errors) until `log_to_dir` gives them a
    file. Idempotent: a second call replaces the console handler."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings; tokenisation is the same either way
    logger = logging.getLogger("toolace_r")
    for handler in [h for h in logger.handlers if isinstance(h, ConsoleHandler)]:
        logger.removeHandler(handler)
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter(CONSOLE_FORMAT, CONSOLE_DATEFMT))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings.warn → the py.warnings logger → driver.log (or last resort)
    # transformers' "Loading weights" / "Writing model shards" bars (it reads this at import; Ray workers started
    # later inherit it)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


class _ToFile(logging.Filter):
    """A logger filter that hands each record to `handler` (a file) and stops it there. A filter on the logger
    itself, so it also catches the console handler a library adds when it first creates its logger — DeepSpeed
    does that on import, which may come after log_to_dir."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.handler.level:
            self.handler.handle(record)
        return False


def log_to_dir(log_dir: str | Path) -> Path:
    """Send the driver's log records to `log_dir`: everything to driver.log, Ray's loggers to ray.log only, and
    take the console handlers of Ray, Ray Data, DeepSpeed, transformers... away (toolace_r keeps its console).
    Import ray.data before calling this: its import installs a console handler of its own."""
    log_dir = Path(log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    with _lock:
        root = logging.getLogger()
        for logger, handler in _state["file_handlers"]:
            logger.removeHandler(handler)
            handler.close()
        _state["file_handlers"] = []
        formatter = logging.Formatter(FILE_FORMAT)
        driver = logging.FileHandler(log_dir / DRIVER_LOG, encoding="utf-8")
        driver.setFormatter(formatter)
        root.addHandler(driver)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        ray_file = logging.FileHandler(log_dir / RAY_LOG, encoding="utf-8")
        ray_file.setFormatter(formatter)
        _state["file_handlers"] = [(root, driver)]
        # every Ray logger, sub-loggers included: Ray Data's import gives some of its own a console handler bound
        # to the stderr of that moment (under pytest, a capture stream that is closed by the next test)
        ray_names = set(RAY_LOGGERS) | {n for n in logging.root.manager.loggerDict if n.startswith("ray.")}
        for name in sorted(ray_names):
            logger = logging.getLogger(name)
            # any stream handler of Ray's is a console one: its PlainRayHandler keeps the stream of its creation
            console_like = [h for h in logger.handlers
                            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
            for handler in console_like:
                logger.removeHandler(handler)
            if name not in RAY_LOGGERS:
                continue
            if name in ("ray", "ray.data"):  # the others propagate to "ray"
                logger.addHandler(ray_file)
                logger.propagate = False
                _state["file_handlers"].append((logger, ray_file))
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            for f in [f for f in logger.filters if isinstance(f, _ToFile)]:
                logger.removeFilter(f)
            logger.addFilter(_ToFile(driver))  # → driver.log, whatever handlers the library adds later
        _state["log_dir"] = log_dir
    return log_dir


def redirect_native_stderr(log_dir: str | Path) -> bool:
    """Point file descriptor 2 of this process at log_dir/native_stderr.log and give Python's sys.stderr a
    duplicate of the terminal. What C/C++ code writes straight to fd 2 then lands in the file — Ray's core worker
    prints e.g. "E core_worker.cc ... has constructor arguments in the object store and max_restarts > 0" once per
    process, which every Ray Data actor pool triggers — while Python's stderr (toolace_r's lines, progress bars,
    tracebacks) still reaches the terminal. Only for a process whose sys.stderr is its own (a command line, not a
    test under pytest's capture); once per process. Returns whether fd 2 is redirected."""
    import os

    if _state["native"] is not None:
        return True
    if sys.stderr is not sys.__stderr__ or sys.__stderr__ is None:
        return False
    try:
        fd = sys.__stderr__.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    path = Path(log_dir).resolve() / NATIVE_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.__stderr__.flush()
    terminal = os.dup(fd)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, fd)
    os.close(target)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.__stderr__.encoding or "utf-8",
                           errors="backslashreplace")
    _state["native"] = path
    return True


def worker_log_routing_available() -> bool:
    """Whether this Ray has the stdstream dispatcher route_worker_logs hooks into."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher  # noqa: F401
    except ImportError:
        return False
    return True


def route_worker_logs(log_dir: str | Path) -> bool:
    """Write what Ray forwards from its worker processes (their stdout/stderr) to log_dir/workers.log instead of
    the terminal. Call after `ray.init(log_to_driver=True)` in this process. Uses Ray's stdstream dispatcher (the
    hook its own printer is registered on); returns False where this Ray has none (then init with
    log_to_driver=False and read the session's logs)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    path = Path(log_dir).resolve() / WORKERS_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        if _state["workers_file"] is not None:
            _state["workers_file"].close()
        out = open(path, "a", encoding="utf-8", buffering=1)
        _state["workers_file"] = out
    dispatcher.remove_handler("ray_print_logs")  # Ray's printer to the terminal
    dispatcher.remove_handler(_WORKER_HANDLER)
    dispatcher.add_handler(_WORKER_HANDLER, lambda data: write_worker_lines(data, out))
    return True


def write_worker_lines(data: dict, out: Any) -> None:
    """One batch of forwarded worker output (Ray's dict: pid, actor_name or task_name, is_err, lines) as lines
    `(Name pid=N) text` — the prefix Ray prints on a terminal, without its colours."""
    name = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({name + ' ' if name else ''}pid={data.get('pid')}{', err' if data.get('is_err') else ''}) "
    try:
        out.write("".join(f"{prefix}{line}\n" for line in data.get("lines", ())))
    except ValueError:  # closed by a later route_worker_logs: nothing to write to
        pass


def current_log_dir() -> Path | None:
    return _state["log_dir"]


# ------------------------------------------------------------------------------------------------ progress
def _fmt_s(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """One stage's progress bar: done / total units with rate and ETA.

    On a terminal a tqdm bar on stderr; otherwise a log line (`probe: 640/2500 samples (26%) 24.1/s, ETA 1m17s`)
    at each 10 % step or every `every_s` seconds, whichever comes first (but not more often than every
    `min_gap_s`), and one at the end. Either way the closing line goes to driver.log. `total` may be set later
    (training learns its step count in the workers)."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", tty: bool | None = None,
                 every_s: float = 30.0, min_gap_s: float = 2.0):
        self.desc, self.unit, self.total = desc, unit, total
        self.n, self.postfix = 0, ""
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.every_s, self.min_gap_s = every_s, min_gap_s
        self._last_line, self._last_decile = self.start, 0
        self._bar = None
        self._closed = False
        if self.tty:
            import os

            from tqdm import tqdm

            try:  # a terminal that reports 0 columns (a pty nobody sized) would get an empty bar
                sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
            except (AttributeError, OSError, ValueError):
                sized = False
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=sized,
                             ncols=None if sized else 100, mininterval=0.5, smoothing=0.1, leave=True)

    def set_total(self, total: int | None) -> None:
        if total == self.total:
            return
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def set_postfix(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1) -> None:
        self.set_n(self.n + n)

    def set_n(self, n: int) -> None:
        """Absolute count (a polled source); may go back (a training run resumed from a checkpoint)."""
        if n == self.n:
            return
        delta, self.n = n - self.n, n
        if self._bar is not None:
            self._bar.update(delta)
            return
        now = time.monotonic()
        decile = int(10 * n / self.total) if self.total else 0
        due = (decile > self._last_decile) or (now - self._last_line >= self.every_s)
        if due and now - self._last_line >= self.min_gap_s and not (self.total and n >= self.total):
            self._last_line, self._last_decile = now, decile
            log.info("%s", self.line())

    def line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        if final:
            tail = f" in {_fmt_s(elapsed)}, {rate:.1f} {self.unit}/s"
        else:
            eta = f", ETA {_fmt_s((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
            tail = f" {rate:.1f}/s{eta}"
        return f"{self.desc}: {done} {self.unit}{pct}{tail}{' | ' + self.postfix if self.postfix else ''}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            log.info("%s", self.line(final=True), extra={"console": False})  # the bar stays on screen
        else:
            log.info("%s", self.line(final=True))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextmanager
def watch(progress: Progress, poll: Callable[[], tuple[int, int | None, str] | None],
          interval_s: float = 0.5) -> Iterator[Progress]:
    """Run `poll()` every `interval_s` on a thread while the block runs (the driver is blocked in Ray) and show
    what it returns: (done, total or None, postfix text), or None for nothing new. A poll that raises is retried
    at the next tick (a file half-written, a directory not there yet). Polled once more at the end."""
    stop = threading.Event()

    def tick() -> None:
        try:
            got = poll()
        except Exception:  # noqa: BLE001 - progress display only
            return
        if got is not None:
            done, total, postfix = got
            if total is not None:
                progress.set_total(total)
            if postfix:
                progress.set_postfix(postfix)
            progress.set_n(done)

    def loop() -> None:
        while not stop.wait(interval_s):
            tick()

    thread = threading.Thread(target=loop, name="toolace-progress", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join(timeout=5)
        tick()
