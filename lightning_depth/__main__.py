"""``python -m lightning_depth COMMAND``: the tools start without importing Lightning; Trainer commands need it."""

from __future__ import annotations

import importlib
import sys

from lightning_depth.errors import UsageError

PROG = "python -m lightning_depth"
# Command -> (module with ``main(argv) -> int``, one line of help). The Trainer commands share lightning_depth.cli.
COMMANDS = {
    "fit": ("lightning_depth.cli", "train a model; with an ablation: section, train and compare every trial"),
    "validate": ("lightning_depth.cli", "evaluate a trained model on the validation split"),
    "test": ("lightning_depth.cli", "evaluate a trained model on the test split"),
    "predict": ("lightning_depth.cli", "predict with a trained model"),
    "summary": ("lightning_depth.commands.summary", "a network's layers, parameters and multiply-adds"),
    "compare": ("lightning_depth.commands.compare", "an ablation's arms with statistics over seeds"),
    "status": ("lightning_depth.commands.status", "where every trial of an ablation stands"),
    "bench": ("lightning_depth.bench.command", "measure the pipeline's overhead, data loading and fast paths"),
    "trial": ("lightning_depth.commands.trial", "run one trial of an ablation (what every launcher runs)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for a command's options)", "",
             "AlexNet, VGG, GoogLeNet, ResNet and DenseNet as paper-faithful Lightning experiments, "
             "with seeded ablations.", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        if argv[0] in module.__dict__.get("TRAINER_COMMANDS", ()):
            return module.run_cli(argv)
        return module.main(argv[1:])
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
