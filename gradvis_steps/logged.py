"""Run one job's command with its output in the job's log, and its error on the console too.

Every rule's shell runs ``python -m gradvis_steps.logged LOG COMMAND...`` instead of ``COMMAND > LOG 2>&1``: stdout and
stderr go to LOG as before, and

- when the command fails, its error lines (stderr lines that start with ``error``, else its last stderr line) are
  also written to this process's stderr: Snakemake's terminal, or the job's SLURM log, so the cause ("no space left
  on device", "permission denied") shows where the user looks, not only in a log file;
- when LOG cannot be opened or written (a read-only or full results folder), one warning line says so and
  everything the command writes goes to this process's stderr instead: the command still runs and reports its
  own problem, rather than the shell failing on the redirection with no word from the step.

Workflow plumbing, not a step: stdlib only, it imports nothing of the package. Signals (SIGTERM from Snakemake
or SLURM, SIGINT, SIGHUP) are passed on to the command, whose exit status is this one's (128 + N for a command
killed by signal N).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import deque
from typing import BinaryIO

USAGE = "usage: python -m gradvis_steps.logged LOG COMMAND [ARG ...]"
MAX_ERROR_LINES = 5  # echoed on failure: a step's one line, an MPI abort's few


class Sink:
    """The log file while it can be written, else this process's stderr; remembers the command's error lines."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.console: BinaryIO = sys.stderr.buffer
        self.log: BinaryIO | None = None
        self.errors: deque[bytes] = deque(maxlen=MAX_ERROR_LINES)
        self.last = b""
        try:
            self.log = open(path, "wb", buffering=0)  # noqa: SIM115 - open for the command's whole run
        except OSError as error:
            self._lost(error)

    def _lost(self, error: OSError) -> None:
        """The log cannot be written: one line saying so, then the command's output on the console."""
        if self.log is not None:
            try:
                self.log.close()
            except OSError:
                pass
            self.log = None
        cause = (error.strerror or str(error)).lower()
        self._console(f"warning: cannot write the log {self.path}: {cause}; the job's messages follow here\n"
                      .encode())

    def _console(self, data: bytes) -> None:
        try:
            self.console.write(data)
            self.console.flush()
        except OSError:  # nowhere left to write: the exit status still tells
            pass

    def write(self, line: bytes, from_stderr: bool) -> None:
        with self.lock:
            if from_stderr and line.strip():
                self.last = line
                if line.lstrip().lower().startswith(b"error"):
                    self.errors.append(line)
            if self.log is not None:
                try:
                    self.log.write(line)
                    return
                except OSError as error:
                    self._lost(error)
            self._console(line)

    def finish(self, status: int) -> None:
        """Close the log; on failure, echo the command's error lines where the user sees them."""
        with self.lock:
            if self.log is not None:
                try:
                    self.log.close()
                except OSError as error:
                    self.log = None
                    self._lost(error)
                else:
                    if status != 0:
                        lines = list(self.errors) or ([self.last] if self.last else [])
                        for line in lines:
                            self._console(line if line.endswith(b"\n") else line + b"\n")


def pump(stream: BinaryIO, sink: Sink, from_stderr: bool) -> None:
    for line in iter(stream.readline, b""):
        sink.write(line, from_stderr)
    stream.close()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    log, command = argv[0], argv[1:]
    sink = Sink(log)
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as error:
        sink.write(f"error: cannot run {command[0]}: {error.strerror or error}\n".encode(), True)
        sink.finish(127)
        return 127

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    pumps = [threading.Thread(target=pump, args=(child.stdout, sink, False), daemon=True),
             threading.Thread(target=pump, args=(child.stderr, sink, True), daemon=True)]
    for thread in pumps:
        thread.start()
    status = child.wait()
    for thread in pumps:  # a process the command left behind may hold its pipes open: do not wait for it forever
        thread.join(timeout=30)
    status = 128 - status if status < 0 else status  # killed by signal N: 128 + N, as a shell says
    sink.finish(status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
