#!/usr/bin/env python
"""Write the LGG demo dataset (real MNI152 anatomy, synthetic lesions) in the Kaggle kaggle_3m layout.

Example::

    python datasets/prepare_lgg_demo.py                      # -> $BRAINSEG_DATASETS/lgg_demo/kaggle_3m
    python datasets/prepare_lgg_demo.py --out /tmp/demo --patients 8 --seed 1 --force
"""

import argparse
import os
import sys


def _int_at_least(minimum: int, description: str):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {description} integer, got {text!r}")
        return value

    return parse


class _OneLineErrorParser(argparse.ArgumentParser):
    """Report bad arguments as one line (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    default_out = os.path.join(os.environ.get("BRAINSEG_DATASETS", "datasets"), "lgg_demo")
    parser = _OneLineErrorParser(prog="prepare_lgg_demo.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=default_out, help=f"dataset root to create (default: {default_out})")
    parser.add_argument(
        "--patients", type=_int_at_least(1, "positive"), default=24, help="number of patients (default: 24)"
    )
    parser.add_argument("--seed", type=_int_at_least(0, "non-negative"), default=0, help="random seed (default: 0)")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from brainseg.data.demo import generate_lgg_demo

    try:
        root = generate_lgg_demo(
            args.out,
            num_patients=args.patients,
            seed=args.seed,
            show_progress=not args.quiet,
            overwrite=args.force,
        )
    except (FileExistsError, ValueError, OSError) as e:
        print(f"prepare_lgg_demo.py: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.patients} demo patients to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
