"""Distributed relevance and decisions over a real Gloo process group (two processes, no Ray).

Ray only launches workers; what must hold across ranks is tested here directly: sums and counts
all-reduced from two data shares equal the relevance of the whole data, channel shares complete each
other, a rank whose plan differs is caught, and the job's ranks hold one model whenever they evaluate it.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from singe_dist.checkpoint import load_model
from singe_dist.config import load_config
from singe_dist.data.digits import MEAN, STD
from singe_dist.data.shards import shard_loader
from singe_dist.data.transforms import eval_transform
from singe_dist.engine.collective import LocalCollective, TorchCollective, assert_same_plan
from singe_dist.engine.loop import PruneJob
from singe_dist.engine.train import recalibrate_batchnorm
from singe_dist.errors import SingeError
from singe_dist.plan.plan import Plan
from singe_dist.plan.reconstruct import reconstruct
from singe_dist.relevance.criteria import CriterionConfig, score
from singe_dist.relevance.registry import make_criterion
from singe_dist.relevance.groups import example_input, find_groups

from .support import DEMO_CONFIG, DIGITS_SIZE, small_job_overrides

CONFIGS = {
    "singe-group": CriterionConfig(name="singe", path="group", steps=3),
    "taylor": CriterionConfig(name="taylor"),
    "singe-channel": CriterionConfig(name="singe", path="channel", steps=2, max_rows=1024),
}


def _relevance(checkpoint: str, val: str, name: str, rank: int, world: int, collective) -> dict[str, torch.Tensor]:  # noqa: ANN001
    model, *_ = load_model(checkpoint)
    groups = find_groups(model, example_input(model, (3, DIGITS_SIZE, DIGITS_SIZE)))
    config = CONFIGS[name]
    split_channels = config.path == "channel"
    # data shares: this rank's exact share of the validation shards; channel shares: all data, some channels
    data_rank, data_world = (0, 1) if split_channels else (rank, world)
    loader = shard_loader(val, mode="eval", num_classes=10, batch_size=64, num_workers=0, rank=data_rank,
                          world_size=data_world, transform=eval_transform(DIGITS_SIZE, DIGITS_SIZE, MEAN, STD))
    if split_channels:  # keep the channel path quick: two groups
        groups = [g for g in groups if g.id in ("conv1", "layers.0.conv1")]
        loader = [next(iter(loader))]
    share = (rank, world) if split_channels else (0, 1)
    return score(make_criterion(config), model, groups, loader, collective.all_reduce_sum, share)


def _bn_batches(val: str, rank: int, world: int) -> list:
    loader = shard_loader(val, mode="eval", num_classes=10, batch_size=48, num_workers=0, rank=rank, world_size=world,
                          transform=eval_transform(DIGITS_SIZE, DIGITS_SIZE, MEAN, STD))
    return list(loader)[:3]


def _reconstructed(checkpoint: str, batches: list, all_reduce_sum=None) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """The weights after refitting the readers of a few channels of two groups (plan/reconstruct.py)."""
    model, *_ = load_model(checkpoint)
    groups = find_groups(model, example_input(model, (3, DIGITS_SIZE, DIGITS_SIZE)))
    channels = {groups[0].id: [0, 3], groups[1].id: [1]}
    reconstruct(model, groups, channels, batches, all_reduce_sum)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _bn_statistics(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def _worker(rank: int, world: int, init_file: str, checkpoint: str, val: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        collective = TorchCollective(torch.device("cpu"))
        results = {name: _relevance(checkpoint, val, name, rank, world, collective) for name in CONFIGS}
        model, *_ = load_model(checkpoint)
        recalibrate_batchnorm(model, _bn_batches(val, rank, world), collective.all_reduce_sum)
        results["bn"] = _bn_statistics(model)
        results["reconstruct"] = _reconstructed(checkpoint, _bn_batches(val, rank, world), collective.all_reduce_sum)
        plan = Plan("digits_resnet", 10, (3, 16, 16), [{"conv1": [0, 1]}])
        if rank == 1:
            plan.steps[0]["conv1"].append(2)  # a diverged rank
        try:
            assert_same_plan(collective, plan)
            results["divergence"] = "not caught"
        except SingeError as exc:
            results["divergence"] = str(exc)
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory, digits_shards, digits_baseline) -> list[dict]:  # noqa: ANN001
    tmp = tmp_path_factory.mktemp("dist")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # keep the process group on the loopback interface
    mp.spawn(_worker, args=(2, str(tmp / "init"), digits_baseline, digits_shards["val"], str(tmp / "out")),
             nprocs=2, join=True)
    return [torch.load(f"{tmp / 'out'}.{r}", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_workers_equal_one_worker(two_rank_results, digits_shards, digits_baseline, name: str) -> None:
    single = _relevance(digits_baseline, digits_shards["val"], name, 0, 1, LocalCollective())
    for rank_result in two_rank_results:
        assert rank_result[name].keys() == single.keys()
        for gid, score in single.items():
            rel = float((rank_result[name][gid] - score).norm() / score.norm())
            assert rel < 1e-5, (name, gid, rel)


def test_bn_reestimation_is_identical_on_every_rank_and_equals_one_process(two_rank_results, digits_shards,
                                                                          digits_baseline) -> None:
    """Each rank reads its own batches; the all-reduced statistics equal one process reading all of them."""
    model, *_ = load_model(digits_baseline)
    before = _bn_statistics(model)
    recalibrate_batchnorm(model, _bn_batches(digits_shards["val"], 0, 2) + _bn_batches(digits_shards["val"], 1, 2))
    single = _bn_statistics(model)
    for key, value in single.items():
        assert torch.equal(two_rank_results[0]["bn"][key], two_rank_results[1]["bn"][key]), key
        assert torch.allclose(two_rank_results[0]["bn"][key], value, rtol=1e-5, atol=1e-6), key
    assert any(not torch.allclose(before[k], single[k]) for k in single)  # the statistics did move


def test_a_diverged_rank_is_caught_on_every_rank(two_rank_results) -> None:
    for result in two_rank_results:
        assert "ranks took different pruning decisions (rank(s) [1] differ from rank 0)" in result["divergence"]


def _job_rank(rank: int, init_file: str, overrides: list[str], out: str) -> None:
    """One rank of a 2-rank pruning job; a digest of its model (parameters and buffers) at every evaluation."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    digests: list[str] = []
    evaluate = PruneJob._evaluate

    def recording(self: PruneJob, model: torch.nn.Module) -> dict[str, float]:
        state = model.state_dict().values()
        digests.append(hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for v in state)).hexdigest())
        return evaluate(self, model)

    PruneJob._evaluate = recording  # this spawned process only
    try:
        PruneJob(load_config(DEMO_CONFIG, overrides), TorchCollective(torch.device("cpu")), log=lambda _m: None).run()
        torch.save(digests, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_every_rank_evaluates_scores_and_checkpoints_one_model(tmp_path, digits_shards, digits_baseline) -> None:
    """After each fine-tuning phase every rank holds rank 0's model, BatchNorm statistics included.

    DDP broadcasts buffers at the start of each forward, so each rank's last batch left its own running
    statistics: the ranks then evaluated (and scored) different models, and a run resumed from rank 0's
    checkpoint took other channels than the run that went on (the SIGINT test of test_launcher).
    """
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    overrides = small_job_overrides(digits_shards, digits_baseline, tmp_path / "run", prune__steps=1,
                                    finetune__iters_per_step=3, finetune__final_iters=2)
    mp.spawn(_job_rank, args=(str(tmp_path / "init"), overrides, str(tmp_path / "digests")), nprocs=2, join=True)
    ranks = [torch.load(f"{tmp_path / 'digests'}.{r}", weights_only=True) for r in range(2)]
    assert len(ranks[0]) == 4  # baseline, after the removal, after its fine-tuning, final
    assert ranks[0] == ranks[1]
    assert len(set(ranks[0])) == 4


def test_reconstruction_sets_the_same_weights_on_every_rank(two_rank_results, digits_shards, digits_baseline) -> None:
    """Each rank refits on its own batches; the all-reduced normal equations give both ranks the same weights,
    which neither rank's batches alone give."""
    alone = _reconstructed(digits_baseline, _bn_batches(digits_shards["val"], 0, 2))
    ranks = [r["reconstruct"] for r in two_rank_results]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in alone)
    assert any(not torch.allclose(ranks[0][k], alone[k]) for k in alone)
