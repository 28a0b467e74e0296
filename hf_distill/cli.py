"""`hf-distill` command line. Also `python -m hf_distill` and `accelerate launch -m hf_distill train CONFIG.yaml`."""

from __future__ import annotations

import argparse
import sys

from .recipe import load_recipe, parse_overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-distill", description="Knowledge distillation for transformers models.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="distil a student from a teacher as a YAML recipe describes",
        description="Run a recipe. Any `--field value` after the path overrides the YAML: `--learning_rate 1e-4` "
        "sets a DistillationConfig field, `--data.block_size 64` a key of another section.",
    )
    train.add_argument("config", help="path of the recipe YAML, e.g. trainer_configs/quickstart.yaml")
    plan = commands.add_parser(
        "plan",
        help="print a recipe's memory plan per process without training",
        description="Load a recipe's models and data and print what one process will hold (student weights, "
        "gradients, optimizer state, teacher weights under its placement, activations, loss tiles) against its "
        "device's memory. Exit status 1 when it does not fit. Takes the same `--field value` overrides as train.",
    )
    plan.add_argument("config", help="path of the recipe YAML")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, rest = _parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        recipe = load_recipe(args.config, parse_overrides(rest))
    except (ValueError, OSError) as error:
        print(f"hf-distill: {error}", file=sys.stderr)
        return 2
    from .run import plan_recipe, run_recipe  # heavy imports only once the recipe is known to be valid

    if args.command == "plan":
        plan = plan_recipe(recipe)
        print(plan.format())
        if not plan.fits:
            print(f"Does not fit. What would: {'; or '.join(plan.suggestions)}.")
            return 1
        return 0
    run_recipe(recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
