"""``python -m hpcflow``: the same command line as the ``hpcflow`` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
