"""The one error-reporting path of every command-line tool, and argparse value types."""
import argparse
import sys
from typing import Callable, Optional, Sequence

from .errors import UserError

__all__ = ["run_cli", "positive_int", "positive_float", "probability"]


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a :class:`~brainseg.utils.errors.UserError` becomes
    ``error: <message>`` on stderr and exit code 1 (no traceback).

    Args:
        main: the tool's main, returning its exit code (None counts as 0).
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        the exit code.
    """
    try:
        return main(argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _checked(convert: Callable[[str], float], accept: Callable[[float], bool], what: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _checked(int, lambda v: v >= 1, "an integer >= 1")
positive_float = _checked(float, lambda v: v > 0, "a number > 0")
probability = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
