"""The wire format: bit packing, payload layout and size, what reading a round rejects (with which
message), and what the server step makes of hand-written payloads (its sums: test_aggregate.py)."""

import re
import struct

import numpy as np
import pytest
import torch

from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.server.aggregate import Aggregator
from fedbat_mpi.server.payloads import read_round
from fedbat_mpi.testing.payloads import make_payload, model_layout
from fedbat_mpi.wire import codec

MODELS = [("cnn4-mnist", 10), ("cnn4", 10), ("resnet10", 10), ("resnet10", 100)]


@pytest.fixture(scope="module")
def layouts() -> dict:
    return {(name, classes): model_layout(name, classes) for name, classes in MODELS}


@pytest.mark.parametrize("size", [1, 7, 8, 9, 63, 1001, 4097])
def test_pack_unpack_round_trip_for_any_size(size):
    signs = np.random.default_rng(size).random(size) < 0.5
    packed = codec.pack_signs(signs)
    assert packed.dtype == np.uint8 and packed.size == (size + 7) // 8
    assert np.array_equal(np.unpackbits(packed, count=size).astype(bool), signs)


@pytest.mark.parametrize("model_key", MODELS, ids=lambda m: f"{m[0]}-{m[1]}")
def test_pack_unpack_round_trip_for_every_tensor_shape_of_the_model(layouts, model_key):
    layout, _ = layouts[model_key]
    rng = np.random.default_rng(0)
    for seg in layout.binarized:
        signs = rng.random(seg.shape) < 0.5
        unpacked = np.unpackbits(codec.pack_signs(signs), count=seg.size).astype(bool).reshape(seg.shape)
        assert np.array_equal(unpacked, signs), seg.name


@pytest.mark.parametrize("kind", list(codec.BodyKind))
@pytest.mark.parametrize("model_key", MODELS[:2], ids=lambda m: m[0])
def test_payload_round_trip_and_documented_size(layouts, model_key, kind):
    layout, _ = layouts[model_key]
    payload = make_payload(layout, 7, kind)
    raw = codec.encode(payload)
    num_scales, d, dense = payload.scales.size, layout.update_size, layout.dense_size
    body = -(-d // 8) if kind is codec.BodyKind.SIGNS else 4 * d
    assert raw.size == codec.payload_size(kind, d, num_scales, dense)
    assert raw.size == -(-(48 + 4 * num_scales + 4 * dense + body) // 8) * 8
    decoded, end = codec.decode(raw, codec.PayloadShape.of(layout, kind))
    assert end == raw.size
    assert (decoded.client_id, decoded.weight, decoded.train_loss, decoded.kind) == (
        payload.client_id, payload.weight, payload.train_loss, payload.kind)  # fmt: skip
    for field in ("scales", "dense", "body"):
        assert np.array_equal(getattr(decoded, field), getattr(payload, field))


def test_fedbat_payload_is_one_bit_per_weight_plus_scales_and_batchnorm(layouts):
    layout, model = layouts[("cnn4-mnist", 10)]
    assert layout.update_size == 389_920 and len(layout.binarized) == 5
    batchnorm_bytes = 4 * sum(t.numel() for n, t in model.state_dict().items() if "num_batches" not in n and n not in layout.binarized_names)
    ideal = layout.update_size / 8 + 4 * len(layout.binarized) + batchnorm_bytes
    size = codec.payload_size(codec.BodyKind.SIGNS, layout.update_size, 5, layout.dense_size)
    assert ideal <= size <= 1.03 * ideal
    float_size = codec.payload_size(codec.BodyKind.FLOAT32, layout.update_size, 0, layout.dense_size)
    assert float_size >= 25 * size


# docs/FEDBAT.md §1.10: binarized weights, binarized tensors, BatchNorm channels, FedBAT payload bytes
DOCUMENTED_SIZES = {
    ("cnn4-mnist", 10): (389_920, 5, 480, 56_488),
    ("cnn4", 10): (398_176, 5, 480, 57_520),
    ("resnet10", 10): (4_897_472, 13, 2_880, 658_368),
    ("resnet10", 100): (4_943_552, 13, 2_880, 664_128),
}


@pytest.mark.parametrize("model_key", MODELS, ids=lambda m: f"{m[0]}-{m[1]}")
def test_the_paper_models_payloads_are_the_documented_sizes(layouts, model_key):
    """The dense part is BatchNorm's four float32 tensors a channel (not its integer batch counter)."""
    layout, _ = layouts[model_key]
    weights, tensors, channels, payload = DOCUMENTED_SIZES[model_key]
    assert (layout.update_size, len(layout.binarized), layout.dense_size) == (weights, tensors, 4 * channels)
    assert codec.PayloadShape.of(layout, codec.BodyKind.SIGNS).size == payload


# ---- the wire format pinned: payloads written out byte by byte from the module docstring's table ----

# A model with two binarized tensors (8 + 3 = 11 entries, so S = 2, d = 11) and one dense one (D = 3).
TINY_SIGNS = [True, False, True, True, False, False, False, True, True, True, False]
TINY_SIGN_BYTES = bytes.fromhex(
    "46424154"  # 0: magic "FBAT"
    "0100"  # 4: version 1 (uint16)
    "01"  # 6: body kind 1, sign bits
    "00"  # 7: reserved
    "03000000"  # 8: client id 3 (uint32)
    "02000000"  # 12: S = 2 (uint32)
    "0b00000000000000"  # 16: d = 11 (uint64)
    "0300000000000000"  # 24: D = 3 (uint64)
    "0000000000000040"  # 32: weight 2.0 (float64)
    "000000000000e03f"  # 40: train loss 0.5 (float64)
    "0000803e" "0000003e"  # 48: scales 0.25, 0.125 (float32)
    "0000803f" "000000c0" "0000003f"  # 56: dense 1.0, -2.0, 0.5 (float32)
    "b1"  # 68: entries 1-8, first in the most significant bit: 1011 0001
    "c0"  # 69: entries 9-11, then zero bits: 110 00000
    "0000"  # 70: zero padding to 72 = align8(48 + 4*2 + 4*3 + 2)
)  # fmt: skip
TINY_FLOAT32_BYTES = bytes.fromhex(
    "46424154" "0100" "02" "00"  # 0: magic, version 1, body kind 2 (float32 values), reserved
    "02010000"  # 8: client id 258
    "00000000"  # 12: S = 0
    "0300000000000000"  # 16: d = 3
    "0100000000000000"  # 24: D = 1
    "0000000000000840"  # 32: weight 3.0
    "000000000000e03f"  # 40: train loss 0.5
    "000000c0"  # 48: dense -2.0
    "0000803f" "0000003f" "000080be"  # 52: values 1.0, 0.5, -0.25; 64 = align8(48 + 4 + 12), no padding
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_layouts() -> dict:
    """For sign payloads: two binarized tensors of 8 and 3 entries and a dense one of 3 (the bias);
    for float32 payloads: a binarized tensor of 3 entries and a dense one of 1."""
    signs = torch.nn.Sequential(torch.nn.Linear(2, 4, bias=False), torch.nn.Linear(1, 3))
    floats = torch.nn.Sequential(torch.nn.Linear(1, 3, bias=False), torch.nn.Linear(1, 1, bias=False))
    return {
        codec.BodyKind.SIGNS: ModelLayout(signs, ["0.weight", "1.weight"]),
        codec.BodyKind.FLOAT32: ModelLayout(floats, ["0.weight"]),
    }


def _tiny_sign_payload(client_id: int = 3) -> codec.Payload:
    scales, dense = np.array([0.25, 0.125], np.float32), np.array([1.0, -2.0, 0.5], np.float32)
    body = codec.pack_signs(np.array(TINY_SIGNS))
    return codec.Payload(client_id, 2.0, 0.5, codec.BodyKind.SIGNS, scales, dense, body, 11)


def _tiny_float32_payload(client_id: int = 258) -> codec.Payload:
    values, dense = np.array([1.0, 0.5, -0.25], np.float32), np.array([-2.0], np.float32)
    return codec.Payload(client_id, 3.0, 0.5, codec.BodyKind.FLOAT32, np.array([], np.float32), dense, values, 3)


def _signs_shape() -> codec.PayloadShape:
    return codec.PayloadShape(codec.BodyKind.SIGNS, 2, 11, 3)


def test_a_sign_payload_is_exactly_the_documented_bytes(tiny_layouts):
    tiny_layout = tiny_layouts[codec.BodyKind.SIGNS]
    assert codec.encode(_tiny_sign_payload()).tobytes() == TINY_SIGN_BYTES
    assert codec.PayloadShape.of(tiny_layout, codec.BodyKind.SIGNS) == _signs_shape()
    assert _signs_shape().size == len(TINY_SIGN_BYTES) == 72
    raw = np.frombuffer(TINY_SIGN_BYTES, dtype=np.uint8)
    payload, end = codec.decode(raw, _signs_shape())
    assert end == 72
    assert (payload.client_id, payload.weight, payload.train_loss) == (3, 2.0, 0.5)
    assert payload.kind is codec.BodyKind.SIGNS
    assert payload.scales.tolist() == [0.25, 0.125] and payload.dense.tolist() == [1.0, -2.0, 0.5]
    assert payload.signs().tolist() == [int(s) for s in TINY_SIGNS]
    # Bit 1 means +scale: aggregated alone onto a zero model, each entry is +-its tensor's scale.
    zeros = np.zeros(tiny_layout.global_size, np.float32)
    new = Aggregator(tiny_layout, _signs_shape())(zeros, read_round(raw, _signs_shape()))
    a, b = 0.25, 0.125
    assert new.tolist() == [a, -a, a, a, -a, -a, -a, a] + [b, b, -b] + [1.0, -2.0, 0.5]


def test_a_float32_payload_is_exactly_the_documented_bytes(tiny_layouts):
    assert codec.encode(_tiny_float32_payload()).tobytes() == TINY_FLOAT32_BYTES
    shape = codec.PayloadShape(codec.BodyKind.FLOAT32, 0, 3, 1)
    assert codec.PayloadShape.of(tiny_layouts[codec.BodyKind.FLOAT32], codec.BodyKind.FLOAT32) == shape
    assert shape.size == len(TINY_FLOAT32_BYTES) == 64
    payload, end = codec.decode(np.frombuffer(TINY_FLOAT32_BYTES, dtype=np.uint8), shape)
    assert end == 64 and (payload.client_id, payload.weight, payload.train_loss) == (258, 3.0, 0.5)
    assert payload.kind is codec.BodyKind.FLOAT32
    assert payload.scales.size == 0 and payload.dense.tolist() == [-2.0]
    assert payload.body.dtype == np.float32 and payload.body.tolist() == [1.0, 0.5, -0.25]


# ---- what reading a round rejects: each defect in the second payload of a round (at byte 72) ----


def _patched(offset: int, fmt: str, value) -> np.ndarray:
    raw = bytearray(TINY_SIGN_BYTES)
    struct.pack_into(fmt, raw, offset, value)
    return np.frombuffer(bytes(raw), dtype=np.uint8)


DEFECTS = {
    "bad-magic": (_patched(0, "<4s", b"FBAX"), "payload at byte 72: bad magic b'FBAX', expected b'FBAT'"),
    "version": (_patched(4, "<H", 2), "payload at byte 72: format version 2, expected 1"),
    "unknown-kind": (_patched(6, "<B", 7), "payload at byte 72 (client 3): unknown body kind 7"),
    "other-kind": (_patched(6, "<B", 2), "(client 3): body kind FLOAT32, this run's algorithm sends SIGNS"),
    "scales": (_patched(12, "<I", 3), "(client 3): 3 scales, this run's model and algorithm send 2"),
    "update-size": (_patched(16, "<Q", 12), "(client 3): update size d = 12, the model's binarized tensors"),
    "dense-size": (_patched(24, "<Q", 4), "(client 3): dense size D = 4, the model's dense tensors have 3"),
    "nan-weight": (_patched(32, "<d", np.nan), "(client 3): aggregation weight nan, expected a finite"),
    "inf-weight": (_patched(32, "<d", np.inf), "(client 3): aggregation weight inf, expected"),
    "zero-weight": (_patched(32, "<d", 0.0), "(client 3): aggregation weight 0.0, expected"),
    "negative-weight": (_patched(32, "<d", -2.0), "(client 3): aggregation weight -2.0, expected"),
    "nan-scale": (_patched(52, "<f", np.nan), "(client 3): scale 1 is nan, expected a finite number >= 0"),
    "inf-scale": (_patched(48, "<f", np.inf), "(client 3): scale 0 is inf, expected"),
    "negative-scale": (_patched(48, "<f", -0.25), "(client 3): scale 0 is -0.25, expected"),
    "truncated": (np.frombuffer(TINY_SIGN_BYTES[:64], np.uint8), "(client 3): truncated (64 of 72 bytes)"),
    "one-byte-short": (np.frombuffer(TINY_SIGN_BYTES[:71], np.uint8), "(client 3): truncated (71 of 72 bytes)"),
    "truncated-header": (np.frombuffer(TINY_SIGN_BYTES[:40], np.uint8), "at byte 72: truncated header"),
    "duplicate": (_patched(8, "<I", 4), "at byte 72 (client 4): duplicate client id (first sent at byte 0)"),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_reading_a_round_rejects_a_bad_payload_naming_where_and_why(defect):
    bad, message = DEFECTS[defect]
    buffer = np.concatenate([codec.encode(_tiny_sign_payload(client_id=4)), bad])
    with pytest.raises(codec.PayloadError, match=re.escape(message)):
        read_round(buffer, _signs_shape())


def test_reading_a_round_accepts_a_zero_scale_the_scale_of_a_zero_update():
    payloads = read_round(_patched(48, "<f", 0.0), _signs_shape())
    assert payloads.scales.tolist() == [[0.0, 0.125]]


TINY = {codec.BodyKind.SIGNS: _tiny_sign_payload, codec.BodyKind.FLOAT32: _tiny_float32_payload}


@pytest.mark.parametrize(
    ("kind", "field", "index", "value", "message"),
    [
        (codec.BodyKind.SIGNS, "dense", 1, np.nan, "client 3: dense value 1 is nan"),
        (codec.BodyKind.SIGNS, "dense", 0, np.inf, "client 3: dense value 0 is inf"),
        (codec.BodyKind.FLOAT32, "dense", 0, -np.inf, "client 258: dense value 0 is -inf"),
        (codec.BodyKind.FLOAT32, "body", 2, np.nan, "client 258: update value 2 is nan"),
    ],
    ids=["signs-dense-nan", "signs-dense-inf", "float32-dense-minus-inf", "float32-body-nan"],
)
def test_a_non_finite_value_never_becomes_the_global_model(tiny_layouts, kind, field, index, value, message):
    """Reading does not scan the float32 arrays; the new model is checked once, then the client named."""
    bad = TINY[kind]()
    getattr(bad, field)[index] = value
    layout = tiny_layouts[kind]
    shape = codec.PayloadShape.of(layout, kind)
    buffer = np.concatenate([codec.encode(TINY[kind](client_id=1)), codec.encode(bad)])
    payloads = read_round(buffer, shape)
    with pytest.raises(codec.PayloadError, match=re.escape(message)):
        Aggregator(layout, shape)(np.zeros(layout.global_size, np.float32), payloads)


def test_of_several_clients_with_non_finite_values_the_lowest_id_is_named(tiny_layouts):
    """Buffer order is the order ranks sent in; the message names the same client for any rank count."""
    bad = {}
    for client_id in (5, 2):  # in the buffer in this order
        bad[client_id] = _tiny_sign_payload(client_id=client_id)
        bad[client_id].dense[0] = np.nan
    layout = tiny_layouts[codec.BodyKind.SIGNS]
    payloads = read_round(np.concatenate([codec.encode(p) for p in bad.values()]), _signs_shape())
    with pytest.raises(codec.PayloadError, match="^client 2: dense value 0 is nan"):
        Aggregator(layout, _signs_shape())(np.zeros(layout.global_size, np.float32), payloads)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_the_server_step_names_an_overflow(tiny_layouts):
    layout = tiny_layouts[codec.BodyKind.FLOAT32]
    huge = _tiny_float32_payload()
    huge.body[:] = 3e38
    shape = codec.PayloadShape.of(layout, codec.BodyKind.FLOAT32)
    with pytest.raises(codec.PayloadError, match="not finite though every payload's values are: overflow"):
        Aggregator(layout, shape)(np.full(layout.global_size, 3e38, np.float32), read_round(codec.encode(huge), shape))
