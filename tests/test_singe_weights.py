"""SInGE's per-weight reading (issue 28 item 3): integrated-gradient attributions of the weights that read a
channel, along the path that scales them from 1 to 0; the channel's relevance is their L1 or L2 norm."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from singe_dist.config import load_config
from singe_dist.plan.plan import apply_step
from singe_dist.relevance.criteria import CriterionConfig, accumulate, score
from singe_dist.relevance.groups import example_input, find_groups
from singe_dist.relevance.registry import make_criterion
from singe_dist.relevance.weights import WeightSums

from .support import DIGITS_SIZE

INPUT = (3, DIGITS_SIZE, DIGITS_SIZE)


def _setup(model, digits_data, ids=("conv1", "layers.1.conv1"), n=24):  # noqa: ANN001, ANN202
    groups = [g for g in find_groups(model, example_input(model, INPUT)) if g.id in ids]
    return groups, digits_data["train"][0][:n], digits_data["train"][1][:n]


def _signed(sums: WeightSums) -> np.ndarray:
    return np.array([float(a.sum()) for per in sums.attributions().values() for a in per])


def test_attributions_add_up_to_the_measured_loss_change_of_removing_the_channel(trained_digits_model,
                                                                                 digits_data) -> None:
    """Completeness, by hand: each channel's attributions sum to L(present) - L(removed), the removal being
    torch-pruning's structural one; the error shrinks with the quadrature points."""
    model = trained_digits_model
    groups, x, y = _setup(model, digits_data)

    def loss(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return F.cross_entropy(m.eval()(x), y).item()

    base, measured = loss(model), []
    for g in groups:
        for k in range(g.size):
            pruned = copy.deepcopy(model)
            apply_step(pruned, {g.id: [k]}, INPUT)
            measured.append(base - loss(pruned))
    measured = np.array(measured)
    assert np.abs(measured).mean() > 1e-3  # the channels matter: the test is not vacuous
    errors = {}
    for steps in (2, 32):
        config = CriterionConfig(name="singe_weights", path="channel", steps=steps)
        estimate = _signed(accumulate(model, groups, [(x, y)], config))
        errors[steps] = np.abs(estimate - measured).mean()
    assert np.corrcoef(estimate, measured)[0, 1] >= 0.98
    assert errors[32] < errors[2] / 4


def test_the_signed_sum_is_the_gate_reading_and_the_score_is_the_norm(trained_digits_model, digits_data) -> None:
    model = trained_digits_model
    groups, x, y = _setup(model, digits_data)
    for path in ("channel", "group"):
        sums = accumulate(model, groups, [(x, y)], CriterionConfig(name="singe_weights", path=path, steps=3))
        gate = accumulate(model, groups, [(x, y)], CriterionConfig(name="singe", path=path, steps=3)).finalize("signed")
        # the gate's integral of dL/dmu is, by the chain rule, the sum of w_i dL/dw_i: the attributions' sum
        assert np.allclose(_signed(sums), -np.concatenate([gate[g.id].numpy() for g in groups]), rtol=1e-4, atol=1e-7)  # float32 passes
    attributions = sums.attributions()
    for norm in (1, 2):
        scores = make_criterion(CriterionConfig(name="singe_weights", path="group", steps=3, norm=norm)).finalize(
            model, groups, sums)
        for g in groups:
            assert scores[g.id].shape == (g.size,)
            by_hand = torch.stack([a.norm(p=norm) for a in attributions[g.id]])
            assert torch.allclose(scores[g.id], by_hand)
            if norm == 1:  # |sum| <= L1 norm
                assert (scores[g.id] >= torch.stack([a.sum().abs() for a in attributions[g.id]]) - 1e-12).all()
    # the norm is not the signed sum's magnitude: some channel's weights pull both ways
    l1 = make_criterion(CriterionConfig(name="singe_weights", norm=1)).finalize(model, groups, sums)
    signed = {g.id: torch.stack([a.sum().abs() for a in attributions[g.id]]) for g in groups}
    assert any((l1[gid] > 1.5 * signed[gid]).any() for gid in l1)


def test_two_halves_all_reduced_give_the_whole_and_a_job_config_names_it(trained_digits_model, digits_data) -> None:
    model = trained_digits_model
    groups, x, y = _setup(model, digits_data, n=40)
    config = CriterionConfig(name="singe_weights", path="group", steps=2)
    whole = accumulate(model, groups, [(x, y)], config)
    halves = [accumulate(model, groups, [(x[:17], y[:17])], config),
              accumulate(model, groups, [(x[17:], y[17:])], config)]
    criterion = make_criterion(config)
    reduced = score(criterion, model, groups, [(x[:17], y[:17])],
                    all_reduce=lambda flat: flat + halves[1].flatten())  # this rank's half + the other's
    expected = criterion.finalize(model, groups, whole)
    for gid in expected:
        assert torch.allclose(reduced[gid], expected[gid], rtol=1e-6)
    assert load_config(None, ["criterion.name=singe_weights"]).criterion.name == "singe_weights"
