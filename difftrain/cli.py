"""What every script does around its work: parse, run, and turn a UserError into one line and exit code 2."""

from __future__ import annotations

import sys

from .errors import UserError


def run(work, argv=None) -> int:
    try:
        work(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        from .utils import remove_empty_created

        remove_empty_created()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside training's own clean stop (loading, decoding, sampling): one line
        print("error: interrupted (Ctrl-C).", file=sys.stderr)
        return 130
    return 0
