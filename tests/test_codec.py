"""The wire format: bit packing, payload layout and size, and the server aggregation."""

import numpy as np
import pytest
import torch

from fedbat_mpi import codec
from fedbat_mpi.aggregate import aggregate
from fedbat_mpi.layout import ModelLayout, model_sha256
from fedbat_mpi.models import binarized_names, build_model

from .payloads import make_payload, reference_aggregate

MODELS = [("cnn4-mnist", 10), ("cnn4", 10), ("resnet10", 10), ("resnet10", 100)]


@pytest.fixture(scope="module")
def layouts() -> dict:
    out = {}
    for name, classes in MODELS:
        torch.manual_seed(0)
        model = build_model(name, classes)
        out[(name, classes)] = (ModelLayout(model, binarized_names(model)), model)
    return out


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
    decoded, end = codec.decode(raw)
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


def test_concatenated_payloads_decode_in_order(layouts):
    layout, _ = layouts[("cnn4-mnist", 10)]
    payloads = [make_payload(layout, cid, kind) for cid, kind in [(3, codec.BodyKind.SIGNS), (1, codec.BodyKind.FLOAT32), (2, codec.BodyKind.SIGNS)]]
    decoded = codec.decode_all(np.concatenate([codec.encode(p) for p in payloads]))
    assert [p.client_id for p in decoded] == [3, 1, 2]
    assert all(np.array_equal(a.body, b.body) for a, b in zip(decoded, payloads))


def test_corrupt_or_truncated_buffers_are_refused(layouts):
    layout, _ = layouts[("cnn4-mnist", 10)]
    raw = codec.encode(make_payload(layout, 1, codec.BodyKind.SIGNS))
    with pytest.raises(ValueError, match="truncated"):
        codec.decode(raw[:-8])
    bad = raw.copy()
    bad[:4] = np.frombuffer(b"XXXX", dtype=np.uint8)
    with pytest.raises(ValueError, match="not a version-1"):
        codec.decode(bad)


@pytest.mark.parametrize("kind", list(codec.BodyKind))
def test_aggregation_equals_the_per_tensor_reference(layouts, kind):
    layout, model = layouts[("cnn4-mnist", 10)]
    global_vector = layout.global_vector(model)
    payloads = [make_payload(layout, cid, kind) for cid in (5, 2, 9, 11)]
    result = aggregate(layout, global_vector, payloads)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, reference_aggregate(layout, global_vector, payloads), rtol=1e-5, atol=1e-6)
    # Client order in the input does not matter: rank 0 sums in client-id order.
    assert model_sha256(aggregate(layout, global_vector, payloads[::-1])) == model_sha256(result)
