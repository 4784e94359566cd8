"""``prune.reconstruct_batches``: the layers that read removed channels are refitted by least squares."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from singe_dist import cli
from singe_dist.checkpoint import load_model
from singe_dist.config import load_config
from singe_dist.engine.faults import FAIL_AT_ENV, FAIL_EXIT_CODE, FAIL_MODE_ENV
from singe_dist.engine.train import eval_sums, recalibrate_batchnorm, result_from_sums
from singe_dist.errors import SingeError
from singe_dist.plan.decide import Budget, prune_one_shot
from singe_dist.plan.plan import apply_step
from singe_dist.plan.reconstruct import _rows, reconstruct
from singe_dist.relevance.criteria import CriterionConfig
from singe_dist.relevance.groups import example_input, find_groups

from .support import DIGITS_SIZE, fork, prune_argv, wait

INPUT = (3, DIGITS_SIZE, DIGITS_SIZE)


def _net(padding: int | str = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=padding), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_a_removed_channel_that_duplicates_a_kept_one_is_recovered_exactly() -> None:
    """Channel 3 of the first convolution is a copy of channel 2, so its readers can take its share on
    channel 2's column: after the refit the pruned network computes what the unpruned one did, while plain
    removal does not."""
    model = _net()
    with torch.no_grad():
        model[0].weight[3], model[0].bias[3] = model[0].weight[2], model[0].bias[2]
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(model[1], name)[3] = getattr(model[1], name)[2]
    x = torch.randn(64, 3, 12, 12)
    with torch.no_grad():
        expected = model(x)
    refitted, removed = copy.deepcopy(model), copy.deepcopy(model)
    groups = find_groups(refitted, example_input(refitted, (3, 12, 12)))
    forwards = reconstruct(refitted, groups, {"0": [3]}, [(x[:32], None), (x[32:], None)])
    assert forwards > 0
    assert not refitted[3].weight[:, 3].any()  # the removed column is gone, the rest refitted
    for net in (refitted, removed):
        apply_step(net, {"0": [3]}, (3, 12, 12))
    assert refitted[3].in_channels == 7
    with torch.no_grad():
        plain_error = float((removed(x) - expected).abs().max())
        assert float((refitted(x) - expected).abs().max()) < 0.01 * plain_error and plain_error > 0.01  # ridge: a small shrinkage


def test_refitting_lowers_the_held_out_loss_of_a_pruned_trained_network(trained_digits_model, digits_data) -> None:
    """Half the MACs of a trained ResNet removed in one step (the Python API's ``prune_one_shot``), BatchNorm
    re-estimated either way: the network whose readers were refitted (on other images than those scored)
    keeps a lower loss."""
    x, y = digits_data["train"]
    held_out = [(x[512:768], y[512:768])]
    calibration = [(x[:128], y[:128]), (x[128:256], y[128:256])]
    results = []
    for refit in (False, True):
        model = copy.deepcopy(trained_digits_model)
        prune_one_shot(model, "digits_resnet", 10, INPUT, calibration, CriterionConfig(), Budget("macs", 0.5),
                       reconstruct=refit)
        recalibrate_batchnorm(model, calibration)
        results.append(result_from_sums(eval_sums(model, held_out)))
    assert results[1].loss < 0.8 * results[0].loss, results
    with pytest.raises(SingeError, match="needs calibration batches"):
        prune_one_shot(copy.deepcopy(trained_digits_model), "digits_resnet", 10, INPUT, None, CriterionConfig(),
                       Budget("macs", 0.5), reconstruct=True)


def test_the_rows_are_the_patches_that_unfold_gives_at_the_sampled_positions() -> None:
    """A strided, dilated, padded convolution: every sampled row is its im2col patch (``F.unfold``) and the
    output there, so ``row @ W.T`` is the convolution's output at that position."""
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=2, dilation=2, bias=False)
    x = torch.randn(4, 3, 11, 9)
    with torch.no_grad():
        y = conv(x)
    rows, out = _rows(conv, x, y, torch.Generator().manual_seed(0), positions=6)
    unfolded = F.unfold(x, 3, dilation=2, padding=2, stride=2).transpose(1, 2).reshape(-1, 27)  # (n * h * w, C k k)
    matches = (rows[:, None, :] - unfolded[None]).abs().amax(-1) < 1e-6
    assert rows.shape == (24, 27) and bool(matches.any(1).all())
    assert torch.allclose(rows @ conv.weight.detach().reshape(5, -1).T, out, atol=1e-5)


class _Shared(nn.Module):
    """One convolution applied twice: a reader whose weights serve two inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.conv(self.stem(x))).mean((2, 3)))


def test_a_reader_it_cannot_refit_is_refused_in_one_line() -> None:
    shared = _Shared()
    before = copy.deepcopy(shared.state_dict())
    with pytest.raises(SingeError, match=r"cannot refit 'conv': it runs 2 times in one forward pass"):
        groups = find_groups(shared, example_input(shared, (3, 8, 8)))
        reconstruct(shared, groups, {groups[0].id: [1]}, [(torch.randn(4, 3, 8, 8), None)])
    assert all(torch.equal(v, before[k]) for k, v in shared.state_dict().items())  # refused before any change
    wide = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 64 * 64, 2))  # VGG's flattened classifier
    with pytest.raises(SingeError, match=r"cannot refit '2' \(Linear\): 12289 unknowns per output, more than 8192"):
        reconstruct(wide, find_groups(wide, example_input(wide, (3, 64, 64))), {"0": [0]},
                    [(torch.randn(2, 3, 64, 64), None)])
    model = _net(padding="same")
    groups = find_groups(model, example_input(model, (3, 12, 12)))
    with pytest.raises(SingeError, match=r"cannot refit '3' \(Conv2d, padding 'same'\)") as err:
        reconstruct(model, groups, {"0": [1]}, [(torch.randn(8, 3, 12, 12), None)])
    assert "\n" not in str(err.value)
    with pytest.raises(SingeError, match=r"prune\.reconstruct_batches.*must be >= 0"):
        load_config(None, ["prune.reconstruct_batches=-1"])


def test_a_job_refits_at_every_step_and_an_interrupted_run_resumes_to_the_same_network(
        digits_shards, digits_baseline, tmp_path) -> None:
    """The refit depends only on the step's calibration batches and seeded positions, so a run stopped in
    its second step's relevance and resumed ends with the plan and the weights of an uninterrupted one."""
    whole = tmp_path / "whole"
    assert cli.main(prune_argv(digits_shards, digits_baseline, whole, prune__reconstruct_batches=1)) == 0
    report = json.loads((whole / "report.json").read_text())
    assert report["wall_time_s"]["reconstruct"] > 0 and report["reconstruct_forward_batches"] > 0
    run_dir = tmp_path / "run"
    argv = prune_argv(digits_shards, digits_baseline, run_dir, prune__reconstruct_batches=1)
    pid = fork(lambda: cli.main(argv), {FAIL_AT_ENV: "relevance:2", FAIL_MODE_ENV: "exit"}, tmp_path / "crash.log")
    assert wait(pid) == FAIL_EXIT_CODE, (tmp_path / "crash.log").read_text()[-3000:]
    assert cli.main([*argv, "--resume"]) == 0
    assert json.loads((run_dir / "plan.json").read_text()) == json.loads((whole / "plan.json").read_text())
    resumed, uninterrupted = (load_model(d / "pruned.pt")[0].state_dict() for d in (run_dir, whole))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
