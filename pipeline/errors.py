"""User-facing errors: a clear one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """A mistake in the user's input (config, path, data). Printed without a traceback."""


def main_guard(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a stage's ``main``: UserError -> message on stderr + exit code 2; Ctrl-C -> 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(fn(*args, **kwargs) or 0)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
