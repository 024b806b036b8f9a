"""The run configuration: one typed dataclass, read from presets, a YAML file and the command line.

Its fields are the engine's options (``RunOptions``) plus every registered algorithm's declared
hyper-parameters (``algorithms.hyperparameters()``), each with its default, help text and check.

Precedence, lowest first: the built-in defaults (the embedded default run), ``--preset NAME``,
``--config FILE.yaml``, then options given on the command line. A resumed run starts from the
checkpoint's configuration instead of the defaults, and may change only what does not change results.
"""

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, get_args

import yaml

from fedbat_mpi.client.algorithms import ALGORITHMS, hyperparameters, options_of_other_algorithms
from fedbat_mpi.client.algorithms.base import POSITIVE, flag, is_positive
from fedbat_mpi.client.models import MODEL_INPUT_SHAPES, check_model_fits
from fedbat_mpi.data.datasets import IMAGE_SHAPES
from fedbat_mpi.data.partition import DIRICHLET_MIN_SAMPLES, parse_scheme
from fedbat_mpi.errors import OneLineParser, UsageError
from fedbat_mpi.server.checkpoint import FILE_NAME

DEVICES = ("auto", "cpu", "cuda")
MAX_THREADS = 1024  # --threads: torch threads per rank
ON_OFF = ("cuda_graphs",)  # options whose values are on/off, which YAML 1.1 reads as true/false
# Options a resumed run may change: where and how it runs, and how long (``rounds`` may only grow),
# and algorithm options declared resumable.
RESUMABLE_CHANGES = frozenset(
    {"rounds", "out", "checkpoint_every", "device", "threads", "data_dir", "cuda_graphs"}
    | {option.name for option in hyperparameters() if option.resumable}
)
WEIGHTINGS = ("batches", "samples")
_Options = TypeVar("_Options", bound="RunOptions")


@dataclass(frozen=True)
class RunOptions:
    """The engine's options of a run (``Config`` adds the algorithms'). Defaults: the embedded default run."""

    algorithm: str = "fedbat"
    dataset: str = "embedded"
    data_dir: str | None = None
    model: str | None = None
    num_clients: int = 40
    clients_per_round: int = 8
    rounds: int = 20
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    partition: str = "iid"
    min_samples: int = DIRICHLET_MIN_SAMPLES
    weighting: str = "batches"
    seed: int = 0
    out: str | None = None
    checkpoint_every: int = 10
    device: str = "auto"
    threads: int = 1
    client_group: int | str = "auto"  # clients trained at once: "auto" (see Engine.group_size) or a number
    cuda_graphs: str = "off"
    eval_batch_size: int = 500

    def validate(self: _Options) -> _Options:
        """Return self, or raise UsageError naming the first bad option (its type first: a checkpoint's
        configuration is read from a file)."""
        for field in fields(self):
            if not _has_type(getattr(self, field.name), field.type):
                _fail(field.name, _expected_type(field.name), getattr(self, field.name))
        positive = ("num_clients", "clients_per_round", "rounds", "local_epochs", "batch_size",
                    "threads", "eval_batch_size")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                _fail(name, "a positive integer", getattr(self, name))
        if self.threads > MAX_THREADS:
            _fail("threads", f"a positive integer up to {MAX_THREADS}", self.threads)
        if self.out == "":
            _fail("out", "a folder name", self.out)
        if self.algorithm not in ALGORITHMS:
            _fail("algorithm", f"one of {', '.join(ALGORITHMS)}", self.algorithm)
        if not is_positive(self.lr):
            _fail("lr", POSITIVE, self.lr)
        for option in hyperparameters():
            if not option.valid(getattr(self, option.name)):
                _fail(option.name, option.expected, getattr(self, option.name))
        if self.client_group != "auto" and not (type(self.client_group) is int and self.client_group >= 1):
            _fail("client_group", "auto or a positive integer", self.client_group)
        if self.cuda_graphs not in ("on", "off"):
            _fail("cuda_graphs", "on or off", self.cuda_graphs)
        if self.checkpoint_every < 0:
            _fail("checkpoint_every", "an integer >= 0 (0: only at the end)", self.checkpoint_every)
        if self.seed < 0:
            _fail("seed", "an integer >= 0", self.seed)
        if self.clients_per_round > self.num_clients:
            _fail("clients-per-round", f"at most --num-clients ({self.num_clients})", self.clients_per_round)
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", self.device):
            _fail("device", "auto, cpu, cuda or cuda:N", self.device)
        if self.weighting not in WEIGHTINGS:
            _fail("weighting", f"one of {', '.join(WEIGHTINGS)}", self.weighting)
        parse_scheme(self.partition)
        if self.model is not None and self.model not in MODEL_INPUT_SHAPES:  # "" too: not the default model
            _fail("model", f"one of {', '.join(MODEL_INPUT_SHAPES)}", self.model)
        if self.model is not None and self.dataset in IMAGE_SHAPES:  # other names: load_dataset says
            check_model_fits(self.model, IMAGE_SHAPES[self.dataset], self.dataset)
        return self

    @property
    def out_dir(self) -> str:
        return self.out or f"runs/{self.algorithm}-{self.dataset}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


if TYPE_CHECKING:  # mypy cannot see the fields ``make_dataclass`` adds: they are read by name (``as_dict``)

    class Config(RunOptions):
        """Every option of a run: the engine's (``RunOptions``) and each algorithm's declared ones."""

else:
    Config = dataclasses.make_dataclass(
        "Config",
        [(option.name, option.type, dataclasses.field(default=option.default)) for option in hyperparameters()],
        bases=(RunOptions,),
        frozen=True,
    )
    Config.__doc__ = "Every option of a run: the engine's (``RunOptions``) and each algorithm's declared ones."
HELP = {
    "algorithm": ", ".join(ALGORITHMS),
    "dataset": f"{', '.join(IMAGE_SHAPES)} (embedded: a Fashion-MNIST sample shipped in the package)",
    "data_dir": "the folder holding the data set's files (every --dataset but embedded)",
    "model": f"the network: {', '.join(MODEL_INPUT_SHAPES)}",
    "num_clients": "clients in all",
    "clients_per_round": "clients sampled each round (at least the number of ranks)",
    "rounds": "rounds in all (a resumed run may raise it)",
    "local_epochs": "passes of local SGD over a client's data each round (the paper's E)",
    "batch_size": "local SGD's batch size",
    "lr": "local SGD's learning rate (momentum 0, no weight decay)",
    "partition": "iid, dir:BETA (Dirichlet label skew) or labels:FRACTION (each client holds that share "
    "of the classes)",
    "min_samples": "with --partition dir:BETA: the fewest samples a client may hold",
    "weighting": f"a client's aggregation weight, the number of its {' or '.join(WEIGHTINGS)}",
    "seed": "every random draw derives from (seed, round, client id), never from the rank",
    "out": "the output folder",
    "checkpoint_every": "write OUT/checkpoint.h5 every this many rounds (0: only at the end)",
    "device": "auto (a GPU when CUDA works, else the CPU), cpu, cuda or cuda:N",
    "threads": f"torch threads per rank (at most {MAX_THREADS})",
    "client_group": "a rank's clients trained at once: auto (on a GPU the rank's whole share, halved while "
    "memory runs out; 1 on a CPU) or a number",
    "eval_batch_size": "the batch size of evaluation on the test set",
    "cuda_graphs": "on: a GPU replays each repeated training step as a CUDA graph (same results, less host "
    "time; off until measured to pay)",
    **{option.name: option.help for option in hyperparameters()},
}

# How --help shows the defaults that are decided later (None in ``RunOptions``).
SHOWN_DEFAULTS = {"data_dir": "none", "model": "the paper's model for the data set", "out": "runs/ALGORITHM-DATASET"}


def _refusal(option: str, expected: str, got: Any) -> UsageError:
    shown = "null" if got is None else repr(got)
    return UsageError(f"{flag(option)}: expected {expected}, got {shown}")


def _fail(option: str, expected: str, got: Any) -> NoReturn:
    raise _refusal(option, expected, got)


def _has_type(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of a field's type (``str | None``: either); an int is a float too, a bool
    neither."""
    kinds = get_args(annotation) or (annotation,)
    kinds += (int,) if float in kinds else ()
    return isinstance(value, kinds) and not isinstance(value, bool)


# The options that may be null (``str | None``): those whose default is decided later.
NULLABLE = frozenset(field.name for field in fields(Config) if _has_type(None, field.type))


def _paper_presets() -> dict[str, dict[str, Any]]:
    """The paper's settings (docs/FEDBAT.md §2.1): 100 clients, 10 per round, E = 10, B = 64."""
    common = dict(num_clients=100, clients_per_round=10, local_epochs=10, batch_size=64, lr=0.1,
                  rho=6.0, warmup=0.5, weighting="batches")  # fmt: skip
    presets = {}
    for dataset, rounds, skew in (("fmnist", 100, "0.3"), ("svhn", 100, "0.3"),
                                  ("cifar10", 200, "0.3"), ("cifar100", 200, "0.1")):  # fmt: skip
        for suffix, partition in (("iid", "iid"), (f"dir{skew}", f"dir:{skew}"), (f"labels{skew}", f"labels:{skew}")):
            presets[f"{dataset}-{suffix}"] = dict(common, dataset=dataset, rounds=rounds, partition=partition)
    return presets


PRESETS: dict[str, dict[str, Any]] = {"embedded": {}, **_paper_presets()}


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m fedbat_mpi.run``; every option shows its default."""
    parser = OneLineParser(
        prog="python -m fedbat_mpi.run",
        description="FedBAT and its baselines, clients hosted by MPI ranks. "
        "With no options: FedBAT on the embedded Fashion-MNIST sample.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument("--preset", help=f"named configuration: {', '.join(PRESETS)}")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (keys as option names)")
    parser.add_argument("--resume", nargs="?", const="", metavar="PATH",
                        help="continue from a checkpoint (default: checkpoint.h5 in --out)")  # fmt: skip
    defaults = Config()
    for field in fields(Config):
        about = f"{HELP[field.name]} " if field.name in HELP else ""
        parser.add_argument(flag(field.name), type=_option_type(field.name), metavar=field.name.upper(),
                            help=f"{about}(default: {SHOWN_DEFAULTS.get(field.name, getattr(defaults, field.name))})")  # fmt: skip
    return parser


def client_group(value: str | int) -> str | int:
    """``--client-group``: ``auto`` or a whole number (its range is checked by ``validate``)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--client-group: expected auto or a positive integer, got {value!r}") from None


def _option_type(name: str) -> Callable[[Any], Any]:
    if name == "client_group":
        return client_group
    kind: Any = {f.name: f.type for f in fields(Config)}[name]  # a class: no string annotations here
    return {int: int, float: float}.get(kind, str)


def option_name(key: Any) -> str | None:
    """The configuration field of option ``key`` as written in a YAML file (dashes or underscores), or
    None when there is no such option."""
    name = str(key).replace("-", "_")
    return name if name in {f.name for f in fields(Config)} else None


def _expected_type(name: str) -> str:
    convert = _option_type(name)
    return "auto or a positive integer" if convert is client_group else convert.__name__


def coerce(name: str, value: Any) -> Any:
    """A value from a YAML file converted to the option's type, as the command line would read it: a
    number's option refuses ``true``/``false``, a whole number's refuses fractions (``2.7``), every option
    refuses lists and mappings, and only one without a default (``NULLABLE``: ``data_dir``, ``model``,
    ``out``) takes null. An
    on/off option (``ON_OFF``) takes ``false``/``true``, as YAML 1.1 reads an unquoted off/on."""
    convert = _option_type(name)
    if value is None and name in NULLABLE:
        return value
    if name in ON_OFF and isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(convert, type) and isinstance(value, convert) and not isinstance(value, bool):
        return value
    refused = _refusal(name, _expected_type(name), value)
    whole = convert in (int, client_group)
    if value is None or isinstance(value, (list, dict)) or convert is not str and isinstance(value, bool):
        raise refused
    if whole and isinstance(value, float) and not value.is_integer():
        raise refused
    try:
        return convert(value)
    except (TypeError, ValueError, OverflowError, UsageError):  # Overflow: an int too large for a float
        raise refused from None


class _KeyGivenTwice(yaml.YAMLError):
    """A YAML mapping that holds one key twice."""


class _DistinctKeysLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that holds one key twice (it would keep the last value)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults": merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):  # an unhashable key is the safe loader's own error
                if key in lines:
                    raise _KeyGivenTwice(f"{key} given twice (lines {lines[key]} and {key_node.start_mark.line + 1})")
                lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: str, source: str, expected: str) -> dict:
    """The mapping YAML file ``path`` holds (empty for an empty file); a one-line UsageError naming
    ``source`` (the option or file kind) when it cannot be read, is not YAML, holds a key twice or
    holds no mapping."""
    try:
        with open(path, "rb") as handle:  # bytes: a file that is not UTF-8 is a YAMLError, not a traceback
            data = yaml.load(handle, Loader=_DistinctKeysLoader) or {}
    except OSError as error:
        raise UsageError(f"{source}: cannot read {path}: {error.strerror}") from None
    except _KeyGivenTwice as error:
        raise UsageError(f"{source}: {path}: {error}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{source}: {path} is not valid YAML ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{source}: {path} must hold {expected}")
    return data


def check_spelled_once(keys: Iterable[Any], where: str) -> None:
    """A UsageError when two of a mapping's ``keys`` are one name, spelled with dashes and with
    underscores (``local-epochs``, ``local_epochs``): one of the two values would go unused."""
    spellings: dict[str, Any] = {}
    for key in keys:
        name = str(key).replace("-", "_")
        if name in spellings:
            raise UsageError(f"{where}: {name} given twice (as {spellings[name]} and {key})")
        spellings[name] = key


def load_yaml(path: str) -> dict[str, Any]:
    """Options from a YAML mapping; keys may use dashes or underscores, not both for one option."""
    data = read_yaml_mapping(path, "--config", "a mapping of option names to values")
    check_spelled_once(data, f"--config: {path}")
    options = {}
    for key, value in data.items():
        name = option_name(key)
        if name is None:
            raise UsageError(f"--config: unknown option {key!r} in {path}")
        options[name] = coerce(name, value)
    return options


@dataclass(frozen=True)
class Invocation:
    """A command line: the options it sets (with its preset and config file) and whether it resumes."""

    options: dict[str, Any]
    resume: str | None  # None: a new run; "": the checkpoint in --out; else a checkpoint's path

    def checkpoint_path(self) -> str:
        if self.resume:
            return self.resume
        return os.path.join(Config(**self.options).out_dir, FILE_NAME)


def parse_command_line(argv: list[str] | None = None) -> Invocation:
    """The options set by ``argv`` (without the program name), before defaults are applied."""
    given = vars(build_parser().parse_args(argv))
    options: dict[str, Any] = {}
    preset = given.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(f"--preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
        options.update(PRESETS[preset])
    config_file = given.pop("config", None)
    if config_file is not None:
        options.update(load_yaml(config_file))
    resume = given.pop("resume", None)
    options.update(given)
    return Invocation(options, resume)


def resumed_config(saved: dict[str, Any], options: dict[str, Any], finished_round: int) -> Config:
    """The configuration of a resumed run: the checkpoint's, with the allowed changes in ``options``.

    Options that would change results must equal the checkpoint's; ``rounds`` may grow, and another
    algorithm's options (a study's edited ``base``) are not this run's.
    """
    known = {f.name for f in fields(Config)}
    unknown = set(saved) - known
    if unknown:
        raise UsageError(f"--resume: the checkpoint's configuration has unknown options {sorted(unknown)}")
    defaults = {f.name: f.default for f in fields(Config)}  # of options newer than the checkpoint
    # A YAML null of an option without a default (the data set's model, no data folder) sets nothing.
    options = {name: value for name, value in options.items() if value is not None or name not in NULLABLE}
    free = RESUMABLE_CHANGES | options_of_other_algorithms(saved.get("algorithm", defaults["algorithm"]))
    for name, value in options.items():
        made_with = saved.get(name, defaults.get(name))
        if name not in free and value != made_with:
            raise UsageError(
                f"{flag(name)}: the checkpoint was made with {made_with!r}, got {value!r} "
                "(resuming must not change results)"
            )
    config = Config(**{**saved, **options}).validate()
    if config.rounds < finished_round:
        raise UsageError(f"--rounds: the checkpoint has already finished round {finished_round}, got {config.rounds}")
    return config


def threads_caveat(saved: dict[str, Any], config: Config) -> str | None:
    """A note for a run resumed on another ``--threads`` than its checkpoint's, whose CPU sums run in
    another order (README, "What is guaranteed"); None on the same number."""
    made_with = saved.get("threads", config.threads)
    if made_with == config.threads:
        return None
    return (f"note: --threads {config.threads}, the checkpoint's run had {made_with}: the resumed run agrees "
            "with an uninterrupted one within float rounding, not bit for bit")
