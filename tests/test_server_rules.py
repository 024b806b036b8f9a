"""The classical sign baselines' server rules (wire/rule.py) against direct computations: majority vote
with ties and unweighted votes, the mean of signs times a server learning rate, dense tensors averaged
by weight under every rule."""

import numpy as np
import pytest
import torch

from fedbat_mpi.client.algorithms import make_algorithm
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.server.aggregate import Aggregator, rule_of
from fedbat_mpi.server.payloads import read_round
from fedbat_mpi.testing.payloads import make_payload, model_layout, reference_aggregate
from fedbat_mpi.wire import codec
from fedbat_mpi.wire.rule import ServerRule

# Two binarized tensors (8 and 3 entries) and a dense bias of 3.
TINY = ModelLayout(torch.nn.Sequential(torch.nn.Linear(2, 4, bias=False), torch.nn.Linear(1, 3)), ["0.weight", "1.weight"])


def _payload(client_id: int, signs: str, weight: float, scale: float, dense: list[float]) -> codec.Payload:
    positive = np.array([c == "+" for c in signs])
    return codec.Payload(client_id, weight, 0.0, codec.BodyKind.SIGNS, np.array([scale, scale], np.float32),
                         np.array(dense, np.float32), codec.pack_signs(positive), TINY.update_size)  # fmt: skip


# Four clients: entries 0-3 are ties (2 against 2), 4-6 a majority of +, 7-10 a majority of -.
CLIENTS = [
    _payload(0, "++--" + "+++" + "-" + "---", 1.0, 0.5, [1.0, 0.0, 0.0]),
    _payload(1, "+-+-" + "++-" + "-" + "--+", 1.0, 0.5, [0.0, 1.0, 0.0]),
    _payload(2, "-+-+" + "+-+" + "+" + "-+-", 1.0, 0.5, [0.0, 0.0, 1.0]),
    _payload(3, "--++" + "-++" + "-" + "+--", 5.0, 0.5, [0.0, 0.0, 0.0]),
]
START = np.arange(TINY.global_size, dtype=np.float32) / 8


def aggregate(layout: ModelLayout, start: np.ndarray, payloads: list[codec.Payload], rule: ServerRule,
              server_lr: float = 1.0, engine: str = "table") -> np.ndarray:  # fmt: skip
    """The engine's server step under ``rule``: the payloads encoded, read back as rank 0 reads a round."""
    shape = codec.PayloadShape.of(layout, codec.BodyKind.SIGNS)
    coefficients, finish = rule_of(rule, server_lr)
    aggregator = Aggregator(layout, shape, coefficients=coefficients, finish=finish, engine=engine)
    return aggregator(start, read_round(np.concatenate([codec.encode(p) for p in payloads]), shape))


def test_majority_vote_moves_each_weight_by_the_step_size_ties_not_at_all_and_ignores_weights():
    new = aggregate(TINY, START, CLIENTS, ServerRule.MAJORITY_VOTE, 0.25)
    step = [0, 0, 0, 0, 1, 1, 1, -1, -1, -1, -1]  # the vote's sign, worked out by hand from CLIENTS
    np.testing.assert_array_equal(new[:11], START[:11] + np.float32(0.25) * np.array(step, np.float32))
    # Dense: the weighted mean (weights 1, 1, 1, 5 of 8), as under every rule.
    np.testing.assert_array_equal(new[11:], np.array([1 / 8, 1 / 8, 1 / 8], np.float32))
    # Client 3's weight 5 would outvote the others if weights counted: entries 0-1 would move down.
    weighted = aggregate(TINY, START, CLIENTS, ServerRule.WEIGHTED_SUM)
    assert (weighted[:2] < START[:2]).all() and (new[:2] == START[:2]).all()


def test_mean_of_signs_is_the_plain_mean_of_scale_times_sign_times_the_server_lr():
    new = aggregate(TINY, START, CLIENTS, ServerRule.MEAN_OF_SIGNS, 3.0)
    counts = np.array([0, 0, 0, 0, 2, 2, 2, -2, -2, -2, -2])  # sum of the four signs, by hand
    np.testing.assert_allclose(new[:11], START[:11] + 3.0 * 0.5 * counts / 4, rtol=1e-6)
    np.testing.assert_array_equal(new[11:], np.array([1 / 8, 1 / 8, 1 / 8], np.float32))


@pytest.mark.parametrize("engine", ["table", "torch"])
@pytest.mark.parametrize("rule", [ServerRule.MAJORITY_VOTE, ServerRule.MEAN_OF_SIGNS])
def test_the_rules_on_a_real_layout_equal_the_float64_reference(rule, engine):
    # Six clients of CNN4-MNIST with fair-coin signs: ties are frequent (5/16 of the entries).
    layout, _ = model_layout("cnn4-mnist")
    payloads = [make_payload(layout, client) for client in range(6)]
    start = np.random.default_rng(0).normal(0, 0.01, layout.global_size).astype(np.float32)
    new = aggregate(layout, start, payloads, rule, 0.003, engine)
    expected = reference_aggregate(layout, start, payloads, rule, 0.003)
    np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-7)
    if rule is ServerRule.MAJORITY_VOTE:
        unmoved = new[: layout.update_size] == start[: layout.update_size]  # binarized tensors lead here
        assert 0.25 < unmoved.mean() < 0.37


def test_the_classical_baselines_declare_their_rule_and_step_size():
    vote = make_algorithm("signsgd-mv", mv_server_lr=0.002)
    mean = make_algorithm("z-signfedavg", z_server_lr=1.5)
    assert (vote.server_rule, vote.server_lr) == (ServerRule.MAJORITY_VOTE, 0.002)
    assert (mean.server_rule, mean.server_lr) == (ServerRule.MEAN_OF_SIGNS, 1.5)
    assert make_algorithm("signsgd").server_rule is ServerRule.WEIGHTED_SUM
    assert vote.step_size_options == ("--lr", "--mv-server-lr")
    assert mean.step_size_options == ("--lr", "--z-server-lr")
    assert make_algorithm("fedbat").step_size_options == ("--lr",)
