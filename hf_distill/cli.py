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
    return parser


def main(argv: list[str] | None = None) -> int:
    args, rest = _parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        recipe = load_recipe(args.config, parse_overrides(rest))
    except (ValueError, OSError) as error:
        print(f"hf-distill: {error}", file=sys.stderr)
        return 2
    from .run import run_recipe  # heavy imports only once the recipe is known to be valid

    run_recipe(recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
