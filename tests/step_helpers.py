"""Running the step modules in tests: as a function call that must succeed, or as the command line does with a bad
input that must fail in one line; and the tiny training run several test files build on."""

from __future__ import annotations

from pathlib import Path

from gradvis_steps import cli
from gradvis_steps import train as train_step


def step(module, *argv) -> None:
    assert module.main([str(a) for a in argv]) == 0


def fails(module, argv, capsys) -> str:
    """Run a step as its command line does; it must exit 2 with one ``error:`` line (returned)."""
    capsys.readouterr()
    assert cli.run(module.main, [str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def train_tiny(path: Path, seed: int, *extra: object) -> Path:
    """A tiny run: LeNet of widths 3, 4, 16, 12 on the digits, batch 128, lr 0.05, one epoch (13 checkpoints) unless
    ``extra`` says otherwise."""
    step(train_step, "--model", "lenet", "--model-option", "widths=[3,4,16,12]", "--epochs", 1, "--batch-size", 128,
         "--lr", 0.05, "--seed", seed, "--no-progress", "--out", path, *extra)
    return path


def interrupt_after(writer, appends: int) -> None:
    """Make ``writer`` raise KeyboardInterrupt (as Ctrl-C would) at its ``appends + 1``-th checkpoint: training stops
    there with its ``.partial`` file and resume state as an interrupted run leaves them."""
    original, calls = writer.append, [0]

    def failing_append(*args, **kwargs):
        calls[0] += 1
        if calls[0] > appends:
            raise KeyboardInterrupt
        original(*args, **kwargs)

    writer.append = failing_append


def without_memory(hvp_record: dict) -> dict:
    """An output's provenance ``hvp`` record less ``memory_mb`` (the automatic budget taken: it varies with the
    memory free at the time), checked to be a positive number of MiB."""
    record = dict(hvp_record)
    assert record.pop("memory_mb") > 0
    return record
