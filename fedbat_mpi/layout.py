"""Where each tensor of a model lives in the flat float32 vectors that the engine moves around.

The *global vector* holds every entry of the model's ``state_dict`` as float32, in state_dict order;
it is what rank 0 broadcasts, what checkpoints store, and what ``model_sha256`` hashes. A client update
has two parts: the *update* of the binarized tensors (every Conv2d/Linear weight, concatenated in
state_dict order) and the *dense* tensors (BatchNorm weights, biases and running statistics) sent in
full precision. Integer buffers (BatchNorm's ``num_batches_tracked``) are neither: they are not used
by training with a fixed momentum, are not federated, and stay at their initial value.
"""

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Segment:
    """One state_dict entry: its slice of the global vector and of the update or dense vector."""

    name: str
    shape: tuple[int, ...]
    global_offset: int
    offset: int
    size: int


class ModelLayout:
    """The mapping between a model's state_dict and the flat vectors, built once per run."""

    def __init__(self, model: torch.nn.Module, binarized: list[str]):
        state = model.state_dict()
        missing = set(binarized) - state.keys()
        if missing:
            raise ValueError(f"binarized tensors not in the model: {sorted(missing)}")
        self.binarized: list[Segment] = []
        self.dense: list[Segment] = []
        self.names = list(state)
        self.shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
        global_offset = 0
        for name, tensor in state.items():
            size = tensor.numel()
            if name in binarized:
                group = self.binarized
            elif tensor.is_floating_point():
                group = self.dense
            else:
                group = None
            if group is not None:
                offset = group[-1].offset + group[-1].size if group else 0
                group.append(Segment(name, tuple(tensor.shape), global_offset, offset, size))
            global_offset += size
        self.global_size = global_offset
        self.update_size = sum(seg.size for seg in self.binarized)
        self.dense_size = sum(seg.size for seg in self.dense)

    @property
    def binarized_names(self) -> list[str]:
        return [seg.name for seg in self.binarized]

    @property
    def binarized_sizes(self) -> tuple[int, ...]:
        """The binarized tensors' numbers of entries: the segments of an update, in order."""
        return tuple(seg.size for seg in self.binarized)

    def binarized_vector(self, model: torch.nn.Module) -> torch.Tensor:
        """The model's binarized tensors as one flat vector, in update order, on their device."""
        return torch.cat([model.get_parameter(name).detach().reshape(-1) for name in self.binarized_names])

    def global_vector(self, model: torch.nn.Module) -> np.ndarray:
        """The model's full state as one float32 vector (on the host)."""
        return np.concatenate(
            [t.detach().reshape(-1).to("cpu", torch.float32).numpy() for t in model.state_dict().values()]
        )

    def tensors(self, global_vector: np.ndarray) -> dict[str, np.ndarray]:
        """The global vector cut into named tensors (views), in state_dict order."""
        out, offset = {}, 0
        for name in self.names:
            size = int(np.prod(self.shapes[name], dtype=np.int64))
            out[name] = global_vector[offset : offset + size].reshape(self.shapes[name])
            offset += size
        return out

    def vector(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """The global vector of named tensors; ValueError if names or shapes differ from the model."""
        if list(tensors) != self.names:
            raise ValueError("tensor names differ from the model's state_dict")
        for name, tensor in tensors.items():
            if tuple(tensor.shape) != self.shapes[name]:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, the model {self.shapes[name]}")
        return np.concatenate([np.asarray(t, dtype=np.float32).reshape(-1) for t in tensors.values()])

    def load(self, model: torch.nn.Module, global_vector: torch.Tensor) -> None:
        """Copy a global vector (a float32 tensor on the model's device) into the model."""
        offset = 0
        with torch.no_grad():
            for tensor in model.state_dict().values():
                size = tensor.numel()
                tensor.copy_(global_vector[offset : offset + size].view(tensor.shape))
                offset += size



def model_sha256(global_vector: np.ndarray) -> str:
    """SHA-256 of a global vector as little-endian float32 (README's ``model_sha256``)."""
    return hashlib.sha256(np.ascontiguousarray(global_vector, dtype="<f4").tobytes()).hexdigest()
