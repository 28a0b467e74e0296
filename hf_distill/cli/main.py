"""`hf-distill` command line. Also `python -m hf_distill` and `accelerate launch -m hf_distill train CONFIG.yaml`."""

from __future__ import annotations

import argparse
import sys

from ..utils.terminal import printable
from .recipe import args_help, load_recipe, parse_overrides
from .recipe_files import check_recipe_files


class _HelpWithArgs(argparse.Action):
    """`-h/--help` of a recipe command: its own help, then every `args:` field with its help (`HfArgumentParser`'s
    listing of `DistillationConfig`), built only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=kwargs.get("help"))

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(parser.format_help())
        print(args_help())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-distill", description="Knowledge distillation for transformers models.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        add_help=False,
        help="distil a student from a teacher as a YAML recipe describes",
        description="Run a recipe. Any `--field value` after the path overrides the YAML: `--learning_rate 1e-4` "
        "sets a DistillationConfig field, `--data.block_size 64` a key of another section.",
    )
    train.add_argument("config", help="path of the recipe YAML, e.g. trainer_configs/quickstart.yaml")
    plan = commands.add_parser(
        "plan",
        add_help=False,
        help="print a recipe's memory plan per process without training",
        description="Load a recipe's models and data and print what one process will hold (student weights, "
        "gradients, optimizer state, teacher weights under its placement, activations, loss tiles) against its "
        "device's memory. Exit status 1 when it does not fit. Takes the same `--field value` overrides as train.",
    )
    plan.add_argument("config", help="path of the recipe YAML")
    for command in (train, plan):
        command.add_argument("-h", "--help", action=_HelpWithArgs, help="show this help and every `args:` field")
    for name, helps in (
        ("cache-teacher", "run the teacher once over a recipe's data and cache its top-k distributions (`cache:`)"),
        ("generate", "have the teacher answer a recipe's prompts, optionally caching its top-k (`generate:`)"),
    ):
        command = commands.add_parser(name, help=helps, description=helps)
        command.add_argument("config", help="path of the recipe YAML")
    lineage = commands.add_parser(
        "lineage",
        help="print a distilled student's lineage, up the chain of teachers",
        description="Read the lineage a student was pushed or saved with (teacher at its pinned commit, license, "
        "objective, student initialisation) and follow the teacher while it is itself a distilled student.",
    )
    lineage.add_argument("repo", help="Hub model id or a saved student's folder")
    lineage.add_argument("--revision", help="branch, tag or commit of a Hub repo (default: main)")
    lineage.add_argument("--json", action="store_true", help="print the whole chain as JSON")
    lineage.add_argument(
        "--max-depth", type=int, default=64, help="read at most this many distilled models up the chain (default 64)"
    )
    return parser


def _print_lineage(args: argparse.Namespace) -> int:
    import json

    from ..hub.lineage import LineageError
    from ..hub.pull import LineageNotFoundError, read_lineage

    # Everything printed comes from files someone else wrote: control characters are escaped (json.dumps escapes
    # them itself), so a record cannot move the cursor, clear the screen or retitle the terminal.
    try:
        pulled = read_lineage(args.repo, revision=args.revision, max_depth=args.max_depth)
    except LineageNotFoundError as error:
        print(f"hf-distill: {printable(error, newlines=False)}", file=sys.stderr)
        return 1
    except LineageError as error:  # name the bad field, still show what could be read
        print(f"hf-distill: {printable(error, newlines=False)}", file=sys.stderr)
        if error.lineage is not None:
            print(json.dumps(error.lineage.to_dict(), indent=2, default=str))
        return 1
    except ValueError as error:
        print(f"hf-distill lineage: {printable(error, newlines=False)}", file=sys.stderr)
        return 2
    except OSError as error:  # no such folder or repo, bad revision, offline: one line, not a traceback
        print(f"hf-distill: {printable(_read_failure(args, error), newlines=False)}", file=sys.stderr)
        return 1
    print(json.dumps(pulled.to_dict(), indent=2) if args.json else pulled.format())
    return 0


def _read_failure(args: argparse.Namespace, error: OSError) -> str:
    """One line saying why `hf-distill lineage` could not read a model, and what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, GatedRepoError):
        return f"{args.repo}: the repository is gated; accept its terms on the Hub and log in (`hf auth login`)."
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"{args.repo}: no such model repository on the Hub (or it is private: log in with `hf auth login` or set "
            "HF_TOKEN)."
        )
    if isinstance(error, RevisionNotFoundError):
        return f"{args.repo}: no revision {args.revision!r}; give a branch, tag or commit of the repository."
    if isinstance(error, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        return (
            f"{args.repo}: cannot be read offline (HF_HUB_OFFLINE is set) and is not in the local cache; unset "
            "HF_HUB_OFFLINE or read it once online."
        )
    first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return f"{args.repo}: {first_line}" if args.repo not in first_line else first_line


def main(argv: list[str] | None = None) -> int:
    args, rest = _parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "lineage":
        if rest:
            print(f"hf-distill lineage: unknown arguments {rest}", file=sys.stderr)
            return 2
        return _print_lineage(args)
    try:  # every check that needs no model: a bad recipe costs one line, not a load and a traceback
        recipe = load_recipe(args.config, parse_overrides(rest))
        check_recipe_files(args.config, recipe)
    except (ValueError, OSError) as error:
        print(f"hf-distill: {printable(' '.join(str(error).split()))}", file=sys.stderr)
        return 2
    section = {"cache-teacher": "cache", "generate": "generate"}.get(args.command)
    if section and getattr(recipe, section) is None:
        print(f"hf-distill {args.command}: the recipe has no `{section}:` section.", file=sys.stderr)
        return 2
    if section:
        from .offline import cache_recipe, generate_recipe

        (cache_recipe if section == "cache" else generate_recipe)(recipe)
        return 0
    from .train import recipe_memory_plan, run_recipe  # heavy imports only once the recipe is known to be valid

    if args.command == "plan":
        plan = recipe_memory_plan(recipe)
        print(plan.format())
        if not plan.fits:
            print(f"Does not fit. What would: {'; or '.join(plan.suggestions)}.")
            return 1
        return 0
    run_recipe(recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
