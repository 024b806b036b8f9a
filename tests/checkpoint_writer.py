"""A checkpoint writer for kill tests: ``python checkpoint_writer.py TARGET SOURCE...`` loads every SOURCE
checkpoint, then serves writes (``forked.serve``): write ``I`` saves state I to TARGET with ``checkpoint.save``.
"""

import sys

from forked import serve

from fedbat_mpi.server import checkpoint


def main() -> None:
    target, *sources = sys.argv[1:]
    states = [checkpoint.load(path) for path in sources]
    serve(lambda line: checkpoint.save(target, states[int(line)]))


if __name__ == "__main__":
    main()
