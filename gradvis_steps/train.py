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
from dataclasses import asdict, fields
from typing import Any

from . import cli
from .backends import backend, known_backends
from .core.training import OPTIMIZERS, SCHEDULES
from .provenance import provenance


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, type=cli.output_file, help="trajectory file to write (.h5)")
    parser.add_argument("--framework", default="torch", choices=known_backends(), help="deep-learning backend")
    parser.add_argument("--dataset", default="digits", help="digits | cifar10 | synthetic | custom")
    parser.add_argument("--dataset-option", type=cli.key_value, action="append", metavar="KEY=VALUE",
                        help="dataset option, e.g. root=data or entry_point=mymod:load (repeatable)")
    parser.add_argument("--model", default="lenet", help="lenet | mlp | resnet20 | resnet | custom")
    parser.add_argument("--model-option", type=cli.key_value, action="append", metavar="KEY=VALUE",
                        help="model option, e.g. widths=[6,16,120,84] or entry_point=mymod:net (repeatable)")
    parser.add_argument("--loss", default="cross_entropy", help="cross_entropy | mse | bce_with_logits | custom")
    parser.add_argument("--loss-option", type=cli.key_value, action="append", metavar="KEY=VALUE",
                        help="loss option, e.g. entry_point=mymod:loss for --loss custom (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialization and data order")
    parser.add_argument("--epochs", type=cli.positive_int, default=1)
    parser.add_argument("--batch-size", type=cli.positive_int, default=256)
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="L2 added to the gradient (sgd, adam); decoupled, theta *= 1 - lr_t * wd (adamw)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                        help="torch's SGD (with --momentum), Adam or AdamW (with --beta1, --beta2, --eps)")
    parser.add_argument("--beta1", type=float, default=0.9, help="adam/adamw: decay of the first moment")
    parser.add_argument("--beta2", type=float, default=0.999, help="adam/adamw: decay of the second moment")
    parser.add_argument("--eps", type=float, default=1e-8, help="adam/adamw: added to the root of the second moment")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="learning rate per iteration: constant; step (times --step-gamma every --step-every "
                             "iterations); cosine (from --lr down to --min-lr at the last iteration)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="linear warm-up over the first N iterations (lr (t+1)/N), then the schedule")
    parser.add_argument("--step-every", type=cli.positive_int, default=None,
                        help="schedule step: iterations between decays of the learning rate")
    parser.add_argument("--step-gamma", type=float, default=0.1, help="schedule step: factor of each decay")
    parser.add_argument("--min-lr", type=float, default=0.0, help="schedule cosine: the final learning rate")
    parser.add_argument("--checkpoint-every", type=cli.positive_int, default=1,
                        help="store a checkpoint every k iterations (the initial and final points always)")
    parser.add_argument("--max-iterations", type=cli.positive_int, default=None,
                        help="stop after this many iterations (default: all epochs)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--on-divergence", choices=("stop", "keep"), default="stop",
                        help="when the batch loss becomes non-finite: stop with an error (no trajectory), or keep the "
                             "checkpoints before it as the trajectory (not part of the run config: a run resumes "
                             "either way)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from <out>.partial (same settings required; one that "
                             "cannot be read, e.g. cut short by a full disk, is started over with a warning)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The framework-neutral run config stored in the trajectory (device excluded: it does not change results
    on CPU and must not change the config hash when a run moves to a GPU)."""
    from .core.training import TrainSettings
    from .losses import DEFAULT_LOSS, normalize

    names = {f.name for f in fields(TrainSettings)}
    settings = TrainSettings(**{k: v for k, v in vars(args).items() if k in names})
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
    args = build_parser().parse_args(argv)
    cli.keep_freed_memory()  # evaluates the model over and over: keep activations' memory in the heap
    config = run_config(args)

    from .core.training import TrainingDiverged, TrainSettings, check_schedule, total_iterations
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
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))


def console_main() -> None:
    """Console-script entry point (``gradvis-train``)."""
    sys.exit(cli.run(main))
