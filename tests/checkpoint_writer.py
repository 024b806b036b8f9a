"""A checkpoint writer for kill tests: ``python checkpoint_writer.py TARGET SOURCE...`` loads every SOURCE
checkpoint, then serves writes (``forked.serve``): write ``I`` saves state I to TARGET with ``checkpoint.save``.
"""

import sys
from typing import TYPE_CHECKING

from fedbat_mpi.server import checkpoint

if TYPE_CHECKING:  # mypy checks tests/ as a package; run as a script, this file has tests/ on sys.path
    from tests.forked import serve
else:
    from forked import serve


def main() -> None:
    target, *sources = sys.argv[1:]
    states = [checkpoint.load(path) for path in sources]
    serve(lambda line: checkpoint.save(target, states[int(line)]))


if __name__ == "__main__":
    main()
