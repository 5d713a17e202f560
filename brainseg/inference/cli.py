"""Shared pieces of the command-line tools using trained models (predict, export)."""
import argparse
import sys
from typing import Callable, Optional, Sequence, Tuple, Type

from brainseg.data import LGGDataError
from brainseg.engine import CheckpointError, ConfigError

__all__ = ["USER_ERRORS", "add_model_arguments", "run_cli", "positive_int", "positive_float", "probability"]

# errors a user causes (bad path, file, config key, checkpoint): one line, no traceback
USER_ERRORS: Tuple[Type[BaseException], ...] = (ConfigError, LGGDataError, CheckpointError)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config-file``, ``--weights`` and the trailing ``key=value`` config overrides."""
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig .py of the model")
    parser.add_argument("--weights", required=True, metavar="FILE", help="trained checkpoint (.pth)")
    parser.add_argument("opts", nargs="*", metavar="key=value", help="config overrides")


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


def run_cli(
    main: Callable[[Optional[Sequence[str]]], int],
    argv: Optional[Sequence[str]] = None,
    *,
    errors: Tuple[Type[BaseException], ...] = (),
) -> int:
    """Run ``main(argv)``; a user error becomes ``error: <message>`` on stderr and exit code 1.

    Args:
        main: the tool's main, returning its exit code.
        argv: command-line arguments (default ``sys.argv[1:]``).
        errors: exception types reported this way besides :data:`USER_ERRORS`.

    Returns:
        the exit code.
    """
    try:
        return main(argv)
    except (*USER_ERRORS, *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
