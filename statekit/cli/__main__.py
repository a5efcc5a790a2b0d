"""``python -m statekit.cli``: the same as the ``statekit`` console script."""

from . import main

if __name__ == "__main__":  # pragma: no cover
    main()
