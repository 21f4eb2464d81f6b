"""Step: train a model with SGD + momentum, Adam or AdamW on a learning-rate schedule and a loss (``--loss``),
writing a checkpoint every k iterations.

    python -m gradvis_steps.train --dataset digits --model lenet --epochs 2 --batch-size 64 \\
        --lr 0.01 --seed 0 --out results/run/trajectory.h5
    python -m gradvis_steps.train --optimizer adamw --weight-decay 0.01 --lr 0.001 --schedule cosine \\
        --warmup 20 --out results/adam/trajectory.h5

The output is an HDF5 trajectory (see ``gradvis_steps.storage.trajectory``) holding the flat
parameters of every checkpoint, the parameter layout, iteration, epoch, batch loss and this config.

Divergence: the first iteration whose batch loss (or whose parameters) is not finite ends training. By default
(``--on-divergence stop``) the step exits with status 2 and one line naming the iteration, epoch, loss and
learning rate; no trajectory is written (``<out>.partial`` stays, so ``--resume --on-divergence keep`` continues
from its last epoch boundary). With ``--on-divergence keep`` the trajectory is written with the checkpoints
before that iteration, ending at the last point with a finite batch loss (added when it was not a stored
checkpoint), with the attribute ``diverged_at``; a warning goes to stderr and the status is 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from . import cli, step_settings
from .backends import backend, known_backends
from .core.training import OPTIMIZERS, SCHEDULES, TrainSettings
from .defaults import schema_default
from .losses import DEFAULT_LOSS
from .provenance import provenance

_RUN = TrainSettings()  # the optimizer, schedule and checkpoint defaults: core.training's, one definition


@dataclass(frozen=True, kw_only=True)
class TrainStepSettings:
    """Settings of the train step: framework, dataset, model and loss (name and options), the training settings of
    :class:`~gradvis_steps.core.training.TrainSettings` (whose defaults these are), the device, the file to write."""

    out: str
    framework: str = "torch"
    dataset: str = "digits"
    dataset_option: tuple[tuple[str, Any], ...] | None = None
    model: str = "lenet"
    model_option: tuple[tuple[str, Any], ...] | None = None
    loss: str = DEFAULT_LOSS
    loss_option: tuple[tuple[str, Any], ...] | None = None
    seed: int = _RUN.seed
    epochs: int = _RUN.epochs
    batch_size: int = _RUN.batch_size
    lr: float = _RUN.lr
    momentum: float = _RUN.momentum
    weight_decay: float = _RUN.weight_decay
    optimizer: str = _RUN.optimizer
    beta1: float = _RUN.beta1
    beta2: float = _RUN.beta2
    eps: float = _RUN.eps
    schedule: str = _RUN.schedule
    warmup: int = _RUN.warmup
    step_every: int | None = _RUN.step_every
    step_gamma: float = _RUN.step_gamma
    min_lr: float = _RUN.min_lr
    checkpoint_every: int = _RUN.checkpoint_every
    max_iterations: int | None = _RUN.max_iterations
    device: str = schema_default("device")
    on_divergence: str = schema_default("train.on_divergence")
    resume: bool = False
    no_progress: bool = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, type=cli.output_file, help="trajectory file to write (.h5)")
    parser.add_argument("--framework", choices=known_backends(), help="deep-learning backend")
    parser.add_argument("--dataset", help="digits | cifar10 | synthetic | custom")
    parser.add_argument("--dataset-option", type=cli.key_value, action="append", metavar="KEY=VALUE",
                        help="dataset option, e.g. root=data or entry_point=mymod:load (repeatable)")
    parser.add_argument("--model", help="lenet | mlp | resnet20 | resnet | custom")
    parser.add_argument("--model-option", type=cli.key_value, action="append", metavar="KEY=VALUE",
                        help="model option, e.g. widths=[6,16,120,84] or entry_point=mymod:net (repeatable)")
    parser.add_argument("--loss", help="cross_entropy | mse | bce_with_logits | custom")
    parser.add_argument("--loss-option", type=cli.key_value, action="append", metavar="KEY=VALUE",
                        help="loss option, e.g. entry_point=mymod:loss for --loss custom (repeatable)")
    parser.add_argument("--seed", type=int, help="seed of initialization and data order")
    parser.add_argument("--epochs", type=cli.positive_int)
    parser.add_argument("--batch-size", type=cli.positive_int)
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--momentum", type=float)
    parser.add_argument("--weight-decay", type=float,
                        help="L2 added to the gradient (sgd, adam); decoupled, theta *= 1 - lr_t * wd (adamw)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS,
                        help="torch's SGD (with --momentum), Adam or AdamW (with --beta1, --beta2, --eps)")
    parser.add_argument("--beta1", type=float, help="adam/adamw: decay of the first moment")
    parser.add_argument("--beta2", type=float, help="adam/adamw: decay of the second moment")
    parser.add_argument("--eps", type=float, help="adam/adamw: added to the root of the second moment")
    parser.add_argument("--schedule", choices=SCHEDULES,
                        help="learning rate per iteration: constant; step (times --step-gamma every --step-every "
                             "iterations); cosine (from --lr down to --min-lr at the last iteration)")
    parser.add_argument("--warmup", type=int,
                        help="linear warm-up over the first N iterations (lr (t+1)/N), then the schedule")
    parser.add_argument("--step-every", type=cli.positive_int,
                        help="schedule step: iterations between decays of the learning rate")
    parser.add_argument("--step-gamma", type=float, help="schedule step: factor of each decay")
    parser.add_argument("--min-lr", type=float, help="schedule cosine: the final learning rate")
    parser.add_argument("--checkpoint-every", type=cli.positive_int,
                        help="store a checkpoint every k iterations (the initial and final points always)")
    parser.add_argument("--max-iterations", type=cli.positive_int,
                        help="stop after this many iterations (default: all epochs)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--on-divergence", choices=("stop", "keep"),
                        help="when the batch loss becomes non-finite: stop with an error (no trajectory), or keep the "
                             "checkpoints before it as the trajectory (not part of the run config: a run resumes "
                             "either way)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from <out>.partial (same settings required; one that "
                             "cannot be read, e.g. cut short by a full disk, is started over with a warning)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return step_settings.use_defaults(parser, TrainStepSettings)


def run_config(args: TrainStepSettings | argparse.Namespace) -> dict[str, Any]:
    """The framework-neutral run config stored in the trajectory (device excluded: it does not change results
    on CPU and must not change the config hash when a run moves to a GPU)."""
    from .losses import normalize

    names = {f.name for f in fields(TrainSettings)}
    settings = TrainSettings(**{name: getattr(args, name) for name in names})
    config = {
        "framework": args.framework,
        "dataset": cli.spec(args.dataset, args.dataset_option),
        "model": cli.spec(args.model, args.model_option),
        "train": asdict(settings),
    }
    loss = normalize(cli.spec(args.loss, args.loss_option))
    # the default (cross-entropy) is not written: a config without ``loss`` means it, so a cross-entropy run keeps
    # the config, hash and run identity it had before losses existed
    return config if loss == {"name": DEFAULT_LOSS} else {**config, "loss": loss}


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), TrainStepSettings, argv))
    return 0


def run(settings: TrainStepSettings) -> Path:
    """Train as ``settings`` say and write the trajectory to ``settings.out``; returns the file written."""
    args = settings
    if args.on_divergence not in ("stop", "keep"):
        raise ValueError(f"on_divergence must be stop or keep, got {args.on_divergence!r}")
    cli.check_outputs(files=(args.out,))
    cli.keep_freed_memory()  # evaluates the model over and over: keep activations' memory in the heap
    config = run_config(args)

    from .core.training import TrainingDiverged, check_schedule, total_iterations
    from .data import load_dataset
    from .losses import check_targets, loss_of
    from .storage.trajectory import TrajectoryWriter

    framework = backend(args.framework)
    device = framework.resolve_device(args.device)
    dataset = load_dataset(config["dataset"])
    settings = TrainSettings(**config["train"])
    check_schedule(settings, total_iterations(settings, len(dataset.x_train)))  # before a file is written
    loss = loss_of(config)
    check_targets(loss, dataset.y_train, dataset.num_classes)
    model = framework.build_model(config, dataset)
    layout = framework.parameter_layout(model)
    writer = TrajectoryWriter(args.out, layout, framework.buffer_layout(model), config,
                              provenance(config, device=str(device)), resume=args.resume)
    start = time.perf_counter()
    diverged = None
    try:
        summary = framework.train(model, dataset, settings, writer, device=device,
                                  progress=not args.no_progress, loss=loss)
    except TrainingDiverged as error:
        if args.on_divergence != "keep" or not error.kept:
            writer.close()  # <out>.partial stays: --resume --on-divergence keep continues from its last epoch
            raise
        diverged, summary = error, error.keep(writer)
    except BaseException:
        writer.close()  # keep <out>.partial (with its resume state) for --resume
        raise
    summary["seconds"] = round(time.perf_counter() - start, 3)
    path = writer.commit(summary)
    if diverged is not None:
        print(f"warning: {diverged.describe()}; kept the {summary['checkpoints']} checkpoint(s) before it "
              f"(iterations 0..{summary['iterations']}) in {path}", file=sys.stderr)
    print(f"wrote {summary['checkpoints']} checkpoints ({summary['iterations']} iterations, "
          f"{layout.size} parameters) to {path} in {summary['seconds']:.1f} s", file=sys.stderr)
    return Path(path)


if __name__ == "__main__":
    sys.exit(cli.run(main))


def console_main() -> None:
    """Console-script entry point (``gradvis-train``)."""
    sys.exit(cli.run(main))
