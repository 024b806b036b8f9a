"""A checkpoint writer for kill tests: one forked child per write, each running ``checkpoint.save``.

Usage: ``python checkpoint_writer.py TARGET SOURCE...``. It loads every SOURCE checkpoint
and prints ``ready``. Then, for each line ``I`` on stdin, it forks a child that saves state I to TARGET
and exits 0, and prints the child's pid; the next line on stdin (any text) asks it to reap that child,
and it prints the child's exit code (negative: killed by that signal). The forked child starts writing
at once, without an interpreter's start-up, so a test's random delays land across the write itself.
"""

import os
import sys
import traceback

from fedbat_mpi.server import checkpoint


def _save_and_exit(target: str, state: checkpoint.RunState) -> None:
    code = 0
    try:
        checkpoint.save(target, state)
    except BaseException:  # noqa: BLE001 - reported to the test as exit code 1
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def main() -> None:
    target, *sources = sys.argv[1:]
    states = [checkpoint.load(path) for path in sources]
    print("ready", flush=True)
    while line := sys.stdin.readline():
        child = os.fork()
        if child == 0:
            _save_and_exit(target, states[int(line)])
        print(child, flush=True)
        sys.stdin.readline()
        print(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), flush=True)


if __name__ == "__main__":
    main()
