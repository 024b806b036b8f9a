"""The SPMD round loop: every rank runs it; rank 0 also aggregates and reports.

A round: draw the clients (same on every rank), train this rank's share on its device, pack each
client's update into the wire format, ``Gatherv`` the bytes to rank 0, aggregate there in client-id
order, broadcast the new float32 global model, and evaluate it with all ranks.

Algorithms with per-client state (EF-SignSGD's error memory) keep it in rank 0's
``ClientStateStore`` (``server/client_state.py``, a file in ``--out``). The round's clients then train
in waves of at most ``STATE_WAVE_BYTES`` of state on rank 0: for each wave rank 0 reads the clients'
rows and scatters them to the ranks that train them (timed as ``broadcast``), and after training
gathers the new rows back and writes them to the store (timed as ``gather``, not counted as uplink:
it is the simulator's bookkeeping, not something a real client would send). So no rank's memory
grows with the number of clients of a round.
"""

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from fedbat_mpi.client.algorithms import LocalTask, LocalUpdate, make_algorithm, on_host
from fedbat_mpi.client.batches import ClientData, TrainingSet
from fedbat_mpi.client.device import in_memory_format, memory_format, select_device
from fedbat_mpi.client.evaluate import evaluate
from fedbat_mpi.client.folding import FoldedModel
from fedbat_mpi.client.models import binarized_names, build_model
from fedbat_mpi.config import Config
from fedbat_mpi.data import Dataset, partition
from fedbat_mpi.errors import FAILURE, UsageError
from fedbat_mpi.layout import ModelLayout, model_sha256
from fedbat_mpi.rng import Stream, derive_seed, torch_generator
from fedbat_mpi.server.aggregate import Aggregator, rule_of
from fedbat_mpi.server.checkpoint import RunState
from fedbat_mpi.server.client_state import ClientStateStore
from fedbat_mpi.server.payloads import read_round
from fedbat_mpi.wire import codec
from fedbat_mpi.wire.comm import Communicator

from .schedule import clients_of_rank, sample_clients

PHASES = ("train", "pack", "gather", "aggregate", "broadcast", "eval")
STATE_WAVE_BYTES = 128 * 2**20  # per-client state rank 0 sends (and receives) at once


@dataclass
class RoundResult:
    """What rank 0 knows after a round (the other ranks get ``None`` instead)."""

    round: int
    clients: list[int]
    test_acc: float
    test_loss: float
    train_loss: float
    uplink_bytes: int
    downlink_bytes: int
    time_s: float
    phase_s: dict[str, float] = field(default_factory=dict)
    model_sha256: str = ""
    peak_rss_mib: list[float] = field(default_factory=list)  # each rank's peak resident memory so far


# What cuDNN and cuBLAS raise instead of ``torch.OutOfMemoryError`` when an allocation fails inside them.
OUT_OF_MEMORY_WORDS = ("out of memory", "ALLOC_FAILED", "unable to find an engine")


def out_of_memory(error: RuntimeError) -> bool:
    """Whether ``error`` says the device ran out of memory (so a smaller group may fit)."""
    return isinstance(error, torch.OutOfMemoryError) or any(word in str(error) for word in OUT_OF_MEMORY_WORDS)


class Engine:
    """One federated run on this rank: the model, this rank's view of the data, the round loop."""

    def __init__(self, config: Config, comm: Communicator, dataset: Dataset):
        self.config = config
        self.comm = comm
        self.device = select_device(config.device, comm.local_rank)
        if config.cuda_graphs == "on" and self.device.type != "cuda":
            raise UsageError(f"--cuda-graphs: on needs a GPU, and this rank runs on the {self.device.type}")
        torch.manual_seed(derive_seed(config.seed, Stream.MODEL_INIT))
        assert config.model is not None  # rounds/job.py sets the data set's default
        model = build_model(config.model, dataset.num_classes)
        self.layout = ModelLayout(model, binarized_names(model))
        self.global_vector = self.layout.global_vector(model)
        self.model = model.to(self.device, memory_format=memory_format(self.device))  # type: ignore[call-overload]
        self.folded = FoldedModel(self.model)  # what evaluation runs
        self.algorithm = make_algorithm(config.algorithm, **config.as_dict())
        self.state_size = self.algorithm.state_size(self.layout)
        self.payload_shape = codec.PayloadShape.of(self.layout, self.algorithm.kind)
        self.states: ClientStateStore | None = None  # rank 0, if the algorithm keeps state: set by rounds/job.py
        self.state_wave_bytes = STATE_WAVE_BYTES
        # Rank 0's server step, its buffers and threads kept for the run (torch engine on a GPU).
        coefficients, finish = rule_of(self.algorithm.server_rule, self.algorithm.server_lr)
        self.aggregator = (
            Aggregator(self.layout, self.payload_shape, self.device, config.threads, coefficients=coefficients,
                       finish=finish, step_sizes=self.algorithm.step_size_options)
            if comm.is_root else None
        )  # fmt: skip
        self.memory_limit = config.clients_per_round  # the largest group the device had memory for
        self.dataset = dataset
        self.training_set = TrainingSet(
            in_memory_format(dataset.train_x.to(self.device), self.device), dataset.train_y.to(self.device),
            tuple(dataset.train_mean), tuple(dataset.train_std), dataset.augment,
        )  # fmt: skip
        self.test_images = in_memory_format(dataset.test_x.to(self.device), self.device)
        self.test_labels = dataset.test_y.to(self.device)
        self.client_indices = partition(
            dataset.train_y.numpy(), config.num_clients, config.partition, config.seed, config.min_samples
        )
        self.client_rows = torch.from_numpy(self.client_indices.indices).to(self.device)  # one copy, not one a client

    def close(self) -> None:
        """The run's end: rank 0's aggregator lets go of its threads, its client-state store of its file."""
        if self.aggregator is not None:
            self.aggregator.close()
        if self.states is not None:
            self.states.close()

    def restore(self, state: RunState) -> None:
        """Continue from a checkpoint's global model."""
        try:
            self.global_vector = self.layout.vector(state.tensors)
        except ValueError as error:
            raise UsageError(f"--resume: the checkpoint's model does not match --model {self.config.model}: {error}") from None

    def new_state_store(self, folder: str) -> ClientStateStore:
        """Rank 0 of a new run: an empty store for the algorithm's per-client rows, in ``folder``."""
        assert self.algorithm.state_name is not None  # an algorithm with state names it
        return ClientStateStore.create(folder, self.algorithm.state_name, self.config.num_clients, self.state_size)

    def run_state(self, round_index: int, metrics: list[dict]) -> RunState:
        """What a checkpoint after ``round_index`` holds (``checkpoint.save_committing`` adds the client state)."""
        tensors = self.layout.tensors(self.global_vector)
        return RunState(round_index, self.config.as_dict(), tensors, metrics, self.comm.size)

    def global_model_bytes(self) -> int:
        return 4 * self.layout.global_size

    def float32_payload_bytes(self) -> int:
        """What one FedAvg client would upload in float32: the reference for compression ratios."""
        return codec.payload_size(codec.BodyKind.FLOAT32, self.layout.update_size, 0, self.layout.dense_size)

    def client_data(self, client_id: int) -> ClientData:
        offsets = self.client_indices.offsets
        return ClientData(self.training_set, self.client_rows[offsets[client_id] : offsets[client_id + 1]])

    def waves(self, clients: np.ndarray) -> list[list[list[int]]]:
        """The round's clients in waves, each a list of every rank's clients (in rank order): one wave
        for stateless algorithms; for stateful ones, waves of at most ``state_wave_bytes`` of state on
        rank 0 (at least one client a rank), so that the state in flight does not grow with the clients
        of a round."""
        size = self.comm.size
        hosted = [clients_of_rank(clients, size, rank).tolist() for rank in range(size)]
        if not self.state_size:
            return [hosted]
        per_rank = max(1, self.state_wave_bytes // (size * 4 * self.state_size))
        count = max(1, -(-max(len(block) for block in hosted) // per_rank))
        return [[block[w * per_rank : (w + 1) * per_rank] for block in hosted] for w in range(count)]

    def send_client_states(self, wave: list[list[int]]) -> dict[int, torch.Tensor]:
        """Rank 0 sends each client's state to the rank that trains it in this wave (``Scatterv``); a
        damaged row (``ClientStateStore.read``) stops every rank first (``EveryRankStops``, exit 2)."""
        parts, damaged = None, None
        if self.comm.is_root:
            assert self.states is not None, "rank 0 of a run with client state holds its store"
            try:
                rows = self.states.read([c for block in wave for c in block])
            except UsageError as error:  # a damaged row: every rank stops, none waits in the scatter
                damaged = error
            else:
                ends = np.cumsum([len(block) for block in wave])
                parts = [part.view(np.uint8).ravel() for part in np.split(rows, ends[:-1])]
        self.comm.stop_together_on(damaged, UsageError.exit_status)
        mine = self.comm.scatter_bytes(parts).view(np.float32).reshape(-1, self.state_size)
        return {c: torch.from_numpy(row.copy()).to(self.device) for c, row in zip(wave[self.comm.rank], mine)}

    def collect_client_states(self, wave: list[list[int]], states: list[np.ndarray]) -> None:
        """The wave's new states return to rank 0 (``Gatherv``), which writes them to the store."""
        mine = np.concatenate([np.zeros(0, np.float32), *states]).view(np.uint8)
        counts = [4 * self.state_size * len(block) for block in wave]
        received, _ = self.comm.gather_bytes(mine, counts, reuse="client states")
        if self.comm.is_root:
            assert self.states is not None and received is not None
            clients = [c for block in wave for c in block]
            self.states.write(clients, received.view(np.float32).reshape(len(clients), self.state_size))

    def bytes_per_rank(self, clients: np.ndarray, bytes_per_client: int) -> list[int]:
        """What each rank sends in a gather of ``bytes_per_client`` for each of its round's clients."""
        size = self.comm.size
        return [bytes_per_client * len(clients_of_rank(clients, size, rank)) for rank in range(size)]

    def local_task(self, round_index: int, client_id: int, state: torch.Tensor | None) -> tuple[LocalTask, float]:
        """One client's local training on this rank's model, and the client's aggregation weight."""
        config, device = self.config, self.device

        def generator(stream: Stream) -> torch.Generator:
            return torch_generator(config.seed, stream, round_index, client_id, device=device)

        data = self.client_data(client_id)
        batches_per_epoch = data.num_batches(config.batch_size)
        task = LocalTask(
            client_id=client_id,
            model=self.model,
            layout=self.layout,
            batches=lambda: data.batches(
                config.local_epochs, config.batch_size, generator(Stream.DATA_ORDER), generator(Stream.AUGMENTATION)
            ),
            num_steps=config.local_epochs * batches_per_epoch,
            lr=config.lr,
            generator=generator,
            state=state,
            graphs=config.cuda_graphs == "on",
        )
        weight = batches_per_epoch if config.weighting == "batches" else len(data)
        return task, float(weight)

    def group_size(self, hosted: int) -> int:
        """How many clients train at once: ``--client-group N``, or for ``auto`` all of the rank's
        ``hosted`` clients (of the round, or of its wave for an algorithm with per-client state) on a
        GPU and one at a time on the CPU, where grouping measured no faster;
        either at most the largest group the device had memory for (``train_within_memory``)."""
        if isinstance(self.config.client_group, int):  # else "auto"
            return min(self.config.client_group, self.memory_limit)
        return max(1, min(hosted, self.memory_limit)) if self.device.type == "cuda" else 1

    def client_groups(self, hosted: list[int]) -> list[list[int]]:
        """This rank's clients in groups trained at once: runs of ``group_size`` clients in client-id
        order (clients of any size; see ``client/algorithms/group.py``)."""
        size = self.group_size(len(hosted))
        return [hosted[i : i + size] for i in range(0, len(hosted), size)]

    def train_clients(
        self, round_index: int, group: list[int], global_on_device: torch.Tensor, states: dict[int, torch.Tensor]
    ) -> list[tuple[LocalUpdate, float]]:
        """Train a group of clients from the global model: their updates and aggregation weights."""
        self.layout.load(self.model, global_on_device)
        self.model.train()
        tasks, weights = zip(*(self.local_task(round_index, c, states.get(c)) for c in group))
        updates = self.algorithm.train(list(tasks))
        return list(zip(on_host(updates) if self.device.type == "cuda" else updates, weights))

    def train_within_memory(
        self, round_index: int, group: list[int], global_on_device: torch.Tensor, states: dict[int, torch.Tensor]
    ) -> list[tuple[LocalUpdate, float]]:
        """``train_clients``, split in halves while the device runs out of memory (each client's streams
        restart, so the result is the same as if the halves had been the groups)."""
        try:
            return self.train_clients(round_index, group, global_on_device, states)
        except RuntimeError as error:
            if len(group) == 1 or not out_of_memory(error):
                raise
        self.algorithm.kept.clear()  # the larger group's kept tensors and CUDA graphs
        torch.cuda.empty_cache()
        half = (len(group) + 1) // 2
        self.memory_limit = min(self.memory_limit, half)
        return [trained for part in (group[:half], group[half:])
                for trained in self.train_within_memory(round_index, part, global_on_device, states)]  # fmt: skip

    def pack(self, client_id: int, update: LocalUpdate, weight: float) -> np.ndarray:
        """The client's payload bytes (sign bits packed 8 per byte, or float32 values)."""
        body = update.body.detach().cpu().numpy()
        if body.dtype == bool:  # signs not yet packed (``on_host`` packs a GPU's on the GPU)
            body = codec.pack_signs(body)
        payload = codec.Payload(
            client_id=client_id,
            weight=weight,
            train_loss=update.train_loss,
            kind=update.kind,
            scales=update.scales.detach().cpu().numpy(),
            dense=update.dense.detach().cpu().numpy(),
            body=body,
            update_size=self.layout.update_size,
        )
        return codec.encode(payload)

    def run_round(self, round_index: int) -> RoundResult | None:
        """One round on every rank; the result on rank 0 only."""
        config, comm = self.config, self.comm
        timer = _PhaseTimer()
        clients = sample_clients(config.seed, round_index, config.num_clients, config.clients_per_round)
        global_on_device = torch.from_numpy(self.global_vector).to(self.device)
        parts = [np.zeros(0, dtype=np.uint8)]
        for wave in self.waves(clients):
            states: dict[int, torch.Tensor] = {}
            if self.state_size:
                with timer("broadcast"):
                    states = self.send_client_states(wave)
            new_states = []
            for group in self.client_groups(wave[comm.rank]):
                with timer("train"):
                    trained = self.train_within_memory(round_index, group, global_on_device, states)
                with timer("pack"):
                    for client_id, (update, weight) in zip(group, trained):
                        parts.append(self.pack(client_id, update, weight))
                        if self.state_size:
                            assert update.state is not None  # an algorithm with state returns it
                            new_states.append(update.state.detach().float().cpu().numpy())
            if self.state_size:
                with timer("gather"):
                    self.collect_client_states(wave, new_states)
        with timer("gather"):
            counts = self.bytes_per_rank(clients, self.payload_shape.size)
            aggregator = self.aggregator  # rank 0's; its receive buffer is pinned for a GPU's engine
            allocate = aggregator.receive_buffer if aggregator is not None else None
            received, _ = comm.gather_bytes(np.concatenate(parts), counts, reuse="payloads", allocate=allocate)
        with timer("aggregate"):
            new_global, unusable = np.empty_like(self.global_vector), None
            if comm.is_root:
                assert self.aggregator is not None and received is not None
                try:
                    payloads = read_round(received, self.payload_shape, self.algorithm.step_size_options)
                    sent = payloads.sorted_ids
                    if sent != clients.tolist():
                        raise codec.PayloadError(f"round {round_index}: payloads came from clients {sent}, "
                                                 f"the round sampled {clients.tolist()}")  # fmt: skip
                    new_global = self.aggregator(self.global_vector, payloads)
                except codec.PayloadError as error:  # every rank stops: none waits in the broadcast
                    unusable = error
            comm.stop_together_on(unusable, FAILURE)
        with timer("broadcast"):
            comm.broadcast(new_global)
            self.global_vector = new_global
        with timer("eval"):
            self.layout.load(self.model, torch.from_numpy(new_global).to(self.device))
            ds, folded = self.dataset, self.folded.of(self.model)
            scores = evaluate(folded, self.test_images, self.test_labels, ds.test_mean, ds.test_std,
                              config.eval_batch_size, comm)  # fmt: skip
        peak_rss, _ = comm.gather_bytes(np.array([peak_rss_mib()]).view(np.uint8), [8] * comm.size)
        if not comm.is_root:
            return None
        assert scores is not None and peak_rss is not None
        return RoundResult(
            round=round_index,
            clients=clients.tolist(),
            test_loss=scores[0],
            test_acc=scores[1],
            train_loss=payloads.train_loss,
            uplink_bytes=payloads.uplink_bytes,
            downlink_bytes=len(clients) * self.global_model_bytes(),
            time_s=timer.total(),
            phase_s=timer.phases,
            model_sha256=model_sha256(new_global),
            peak_rss_mib=peak_rss.view(np.float64).round(1).tolist(),
        )


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class _PhaseTimer:
    """Wall seconds per phase, summed over a round."""

    def __init__(self) -> None:
        self.phases = {name: 0.0 for name in PHASES}
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] += time.perf_counter() - start

    def total(self) -> float:
        return time.perf_counter() - self._start
