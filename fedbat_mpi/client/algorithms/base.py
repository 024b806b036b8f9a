"""The interface every federated algorithm implements, its options, and the registry of algorithms."""

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedbat_mpi.client.batches import Batch
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.rng import Stream
from fedbat_mpi.wire.codec import BodyKind
from fedbat_mpi.wire.rule import ServerRule


@dataclass
class LocalTask:
    """One client's local training: the model holds the global weights (and is not changed)."""

    client_id: int
    model: torch.nn.Module
    layout: ModelLayout
    batches: Callable[[], Iterator[Batch]]  # every local step's batch, in order
    num_steps: int
    lr: float
    generator: Callable[[Stream], torch.Generator]  # the client's stream for (seed, round, id)
    state: torch.Tensor | None = None  # the client's persistent state (zeros before its first round)
    graphs: bool = False  # replay repeated steps of its group as CUDA graphs (``group.GroupStep``)


@dataclass
class LocalUpdate:
    """What a client uploads, and what it keeps."""

    kind: BodyKind
    scales: torch.Tensor  # float32, one per binarized tensor for sign bodies, else empty
    body: torch.Tensor  # bool signs (True for +scale), or those packed (uint8, ``pack_sign_rows``), or float32 values
    dense: torch.Tensor  # the dense (BatchNorm) tensors after training, flat float32
    train_loss: float
    state: torch.Tensor | None = None  # the client's new persistent state, kept by rank 0


def on_host(updates: list[LocalUpdate]) -> list[LocalUpdate]:
    """A group's updates with their tensors on the host, moved together: one copy (and one wait for a
    GPU) per kind of tensor for the whole group, where moving each client's took three; a GPU's sign
    bodies packed there, so that an eighth of their bytes moves and the host has nothing to pack. The
    updates of a group have equal shapes."""
    columns: dict[str, list[Any]] = {}
    for name in ("scales", "body", "dense", "state"):
        tensors = [getattr(update, name) for update in updates]
        if tensors[0] is None:
            columns[name] = [None] * len(updates)
            continue
        stacked = torch.stack(tensors)
        if name == "body" and stacked.dtype == torch.bool and stacked.is_cuda:  # numpy packs faster on a CPU
            stacked = pack_sign_rows(stacked)
        columns[name] = list(stacked.cpu())
    return [dataclasses.replace(update, **{name: column[k] for name, column in columns.items()})
            for k, update in enumerate(updates)]  # fmt: skip


def pack_sign_rows(signs: torch.Tensor) -> torch.Tensor:
    """Rows of bool signs (``G x P``) as bytes (``G x ceil(P/8)``), eight entries a byte with the first
    in the high bit and the last byte padded with zeros: ``np.packbits`` of each row, on the signs' device."""
    size, entries = signs.shape
    bits = torch.nn.functional.pad(signs.to(torch.uint8), (0, -entries % 8)).view(size, -1, 8)
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=signs.device)  # made there: no copy to wait for
    return bits.bitwise_left_shift_(shifts).sum(-1, dtype=torch.uint8)  # distinct bits: the sum is their or


def flag(name: str) -> str:
    """The command-line option of a configuration field: ``--NAME``, dashes for underscores."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class HyperParameter:
    """An option an algorithm declares: it becomes ``--NAME`` (dashes for underscores), a field of the
    run's configuration, a line of ``--help``, a check at start-up and a resume rule."""

    name: str
    type: type
    default: Any
    help: str
    expected: str  # what a valid value is, in words, for the error message
    valid: Callable[[Any], bool]
    resumable: bool = False  # whether a resumed run may change it (only if results do not change)


# Training computes in float32: a larger option overflows. Each check with its words for the error message.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
POSITIVE = f"a positive number up to {FLOAT32_MAX:.2e}"
NON_NEGATIVE = f"a number in [0, {FLOAT32_MAX:.2e}]"


def is_positive(value: float) -> bool:
    """Whether ``value`` is ``POSITIVE`` (nan and infinities are not)."""
    return 0 < value <= FLOAT32_MAX


def is_non_negative(value: float) -> bool:
    """Whether ``value`` is ``NON_NEGATIVE``."""
    return 0 <= value <= FLOAT32_MAX


def positive_option(name: str, default: float, help: str) -> HyperParameter:
    """A float option that must be ``POSITIVE`` (a step size, a noise scale)."""
    return HyperParameter(name, float, default, help, POSITIVE, is_positive)


class Algorithm(ABC):
    """A federated algorithm: how a group of clients trains and what each uploads.

    The server side is declared, not written: ``server_rule`` names what rank 0 does with the
    decoded updates (``wire/rule.py``; by default it adds their weighted mean, ``scale * sign`` or the
    float32 values, to the binarized tensors), with the step size ``server_lr``; dense tensors are
    averaged under every rule.
    Subclasses are registered with :func:`register`; their ``hyperparameters`` arrive as keyword
    arguments of the constructor.
    """

    name: ClassVar[str]
    kind: ClassVar[BodyKind]
    hyperparameters: ClassVar[tuple[HyperParameter, ...]] = ()
    state_name: ClassVar[str | None] = None  # per-client state kept between rounds (and in checkpoints)
    server_rule: ClassVar[ServerRule] = ServerRule.WEIGHTED_SUM
    server_lr_option: ClassVar[str | None] = None  # the hyper-parameter holding server_rule's step size

    @property
    def server_lr(self) -> float:
        """The server step size of ``server_rule``: its ``server_lr_option``'s value (without one, 1)."""
        return 1.0 if self.server_lr_option is None else float(getattr(self, self.server_lr_option))

    @property
    def step_size_options(self) -> tuple[str, ...]:
        """The command-line options that set how far a round moves the model (named when it diverges)."""
        server = () if self.server_lr_option is None else (flag(self.server_lr_option),)
        return ("--lr", *server)

    def __init__(self, **options: Any):
        for option in self.hyperparameters:
            setattr(self, option.name, options.get(option.name, option.default))
        self.kept: dict = {}  # group tensors kept between rounds for CUDA graphs (``group.keep``)

    def state_size(self, layout: ModelLayout) -> int:
        """The number of float32 values of per-client state; 0 for stateless algorithms."""
        return 0

    @abstractmethod
    def train(self, tasks: list[LocalTask]) -> list[LocalUpdate]:
        """Train a group of clients from the global model (``group.train_group``); their updates in order."""


REGISTRY: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make ``cls`` available as ``--algorithm cls.name``."""
    declared = {option.name: option for other in REGISTRY.values() for option in other.hyperparameters}
    for option in cls.hyperparameters:
        if option.name in declared and declared[option.name] != option:
            raise ValueError(f"{cls.name} declares option {option.name} differently from another algorithm")
    REGISTRY[cls.name] = cls
    return cls
