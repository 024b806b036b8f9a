"""A study's grid file (``GRID.yaml``): the runs it names, their folders, and where each one stands.

::

    out: runs/fmnist-paper        # the study folder (default: runs/<the file's name without .yaml>)
    runs_at_once: 2               # runs the driver keeps going together (default 1)
    ranks_per_run: 1              # MPI ranks of each run (default 1)
    launcher: mpirun -n {ranks}   # what starts a run's ranks, split at spaces (the default)
    base:                         # the options of every run, as in a --config file, and a preset
      preset: fmnist-iid
    grid:                         # option: list of values; a run for every combination
      algorithm: [fedavg, fedbat]
      seed: [0, 1, 2]

A run's options are its preset's, then ``base``'s, then its grid values (the same precedence as
``--preset``, ``--config`` and the command line). Runs are numbered in the order of the Cartesian
product, the first grid option varying slowest, and each has a folder in the study folder named after
its grid values alone, e.g. ``fedavg-seed0`` (``dir:0.3`` becomes ``dir0.3``), at most ``NAME_MAX``
bytes; an absent or empty ``grid`` is one run, ``run``. A key may be written with dashes or
underscores, not both. Every run's configuration is checked when the file is read, so that a typo
fails at once, not hours later.
"""

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbat_mpi.config import (
    PRESETS,
    Config,
    check_spelled_once,
    coerce,
    option_name,
    read_yaml_mapping,
    resumed_config,
)
from fedbat_mpi.errors import UsageError
from fedbat_mpi.server.checkpoint import FILE_NAME, saved_round_and_config

SETTINGS = ("out", "runs_at_once", "ranks_per_run", "launcher", "base", "grid")
DEFAULT_LAUNCHER = "mpirun -n {ranks}"
NAME_MAX = 255  # the longest file name, in bytes, of common file systems (ext4, XFS, tmpfs, Lustre)


@dataclass(frozen=True)
class Standing:
    """Where a run stands: its checkpoint's round (None without one) out of its rounds."""

    round: int | None
    rounds: int
    problem: str | None = None  # why the checkpoint cannot be resumed by this run

    @property
    def done(self) -> bool:
        return self.round is not None and self.round >= self.rounds

    def __str__(self) -> str:
        if self.problem:
            return f"checkpoint refused ({self.problem})"
        if self.round is None:
            return "not started"
        return f"done at round {self.round}" if self.done else f"stopped at round {self.round} of {self.rounds}"


@dataclass(frozen=True)
class GridRun:
    """One run of the grid: its number, folder name, options (for ``--config``) and configuration."""

    index: int
    name: str
    options: dict[str, Any]
    config: Config
    folder: Path

    @property
    def checkpoint(self) -> Path:
        return self.folder / FILE_NAME

    def standing(self) -> Standing:
        """Where the run's checkpoint stands; one that is unreadable or not this run's (its options,
        checked as ``--resume`` checks them: an edited grid, a copied file) is a problem, never done."""
        if not self.checkpoint.exists():
            return Standing(None, self.config.rounds)
        try:
            finished, saved = saved_round_and_config(str(self.checkpoint), option="checkpoint")
            resumed_config(saved, self.options, finished)
        except UsageError as error:
            return Standing(None, self.config.rounds, str(error))
        return Standing(finished, self.config.rounds)


@dataclass(frozen=True)
class Study:
    """A grid file read and checked: the study folder, its runs, and how the driver starts them."""

    path: str
    folder: Path
    runs: list[GridRun]
    runs_at_once: int
    ranks_per_run: int
    launcher: str


def load_study(path: str, out: str | None = None) -> Study:
    """The study in grid file ``path`` (its folder replaced by ``out`` if given); a UsageError naming
    the key for anything wrong in it, every run's options included."""
    data = read_yaml_mapping(path, "grid file", f"a mapping with keys {', '.join(SETTINGS)}")
    for key in data:
        if str(key).replace("-", "_") not in SETTINGS:
            raise UsageError(f"{path}: unknown key {key!r} (expected {', '.join(SETTINGS)})")
    check_spelled_once(data, path)
    data = {str(key).replace("-", "_"): value for key, value in data.items()}
    base = _options(data.get("base"), f"{path}: base")
    grid = _grid(data.get("grid"), f"{path}: grid")
    runs_at_once = _positive(data.get("runs_at_once", 1), f"{path}: runs_at_once")
    ranks_per_run = _positive(data.get("ranks_per_run", 1), f"{path}: ranks_per_run")
    launcher = data.get("launcher", DEFAULT_LAUNCHER)
    if not isinstance(launcher, str) or not launcher.split():
        raise UsageError(f"{path}: launcher: expected a command, e.g. {DEFAULT_LAUNCHER!r}, got {launcher!r}")
    given, where = (out, "--out") if out is not None else (data.get("out"), f"{path}: out")
    folder = Path("runs") / Path(path).stem if given is None else _folder(given, where)
    runs = []
    for index, values in enumerate(itertools.product(*grid.values())):
        point = dict(zip(grid, values))
        name = _folder_name(point, f"{path}: grid: run {index}")
        options = _resolve({**base, **point})
        try:
            config = Config(**options).validate()
        except UsageError as error:
            raise UsageError(f"{path}: run {name}: {error}") from None
        if ranks_per_run > config.clients_per_round:
            raise UsageError(f"{path}: ranks_per_run: expected at most the run's clients per round "
                             f"({config.clients_per_round}), got {ranks_per_run}")  # fmt: skip
        runs.append(GridRun(index, name, options, config, folder / name))
    names = [run.name for run in runs]
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise UsageError(f"{path}: grid: two runs would share the folder {twice!r}; make the values differ")
    return Study(path, folder, runs, runs_at_once, ranks_per_run, launcher)


def _option(key: Any, value: Any, where: str) -> tuple[str, Any]:
    """An option of a run as a configuration field and a typed value; ``preset`` is one too."""
    if key == "preset":
        if not isinstance(value, str) or value not in PRESETS:
            raise UsageError(f"{where}: preset: expected one of {', '.join(PRESETS)}, got {value!r}")
        return key, value
    name = option_name(key)
    if name is None:
        raise UsageError(f"{where}: unknown option {key!r}")
    if name == "out":
        raise UsageError(
            f"{where}: out: each run's folder is set by the study (the top-level out is the study's)"
        )
    try:
        return name, coerce(name, value)
    except UsageError as error:
        raise UsageError(f"{where}: {error}") from None


def _options(mapping: Any, where: str) -> dict[str, Any]:
    """``base``'s options (None, an empty ``base:``, has none)."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise UsageError(f"{where}: expected a mapping of option names to values, got {mapping!r}")
    check_spelled_once(mapping, where)
    return dict(_option(key, value, where) for key, value in mapping.items())


def _grid(mapping: Any, where: str) -> dict[str, list[Any]]:
    """``grid``'s options and their values (None, an empty ``grid:``, has none)."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise UsageError(f"{where}: expected a mapping of option names to lists of values, got {mapping!r}")
    check_spelled_once(mapping, where)
    grid = {}
    for key, values in mapping.items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"{where}: {key}: expected a non-empty list of values, got {values!r}")
        typed = [_option(key, value, where) for value in values]
        grid[typed[0][0]] = [value for _, value in typed]
    return grid


def _resolve(options: dict[str, Any]) -> dict[str, Any]:
    """A run's options with its preset (if any) expanded beneath the others."""
    options = dict(options)
    preset = options.pop("preset", None)
    return {**PRESETS[preset], **options} if preset else options


def _positive(value: Any, where: str) -> int:
    if type(value) is not int or value < 1:
        raise UsageError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _folder(value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: expected a folder name, got {value!r}")
    return Path(value)


def _folder_name(point: dict[str, Any], where: str) -> str:
    """The folder name of the run with grid values ``point`` (``run`` without any); a UsageError when
    it is longer than a file name may be."""
    components = {option: _component(option, value) for option, value in point.items()}
    name = "-".join(components.values()) or "run"
    if len(name) > NAME_MAX:  # in bytes: _component leaves ASCII alone
        longest = max(components, key=lambda option: len(components[option]))
        raise UsageError(f"{where}: its folder name would be {len(name)} bytes, more than a file name may be "
                         f"({NAME_MAX}); shorten its {longest} value")  # fmt: skip
    return name


def _component(option: str, value: Any) -> str:
    """A run's value of one grid option in its folder name: a word as it is (``fedavg``,
    ``dir0.3``), a number after its option's name (``seed0``); characters other than letters, digits
    and ``._+-`` become ``_``, and dots alone (``..``, a path's parent) follow the option's name."""
    text = value if isinstance(value, str) else f"{option}{value}"
    text = re.sub(r"[^A-Za-z0-9._+-]", "_", text.replace(":", ""))
    return f"{option}{text}" if text and not text.strip(".") else text
