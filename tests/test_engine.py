"""The entwined prune / fine-tune engine and the main job, in one process on real digits shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from singe_dist.checkpoint import load_model, read_checkpoint
from singe_dist.config import load_config
from singe_dist.demo import DEMO_CONFIG
from singe_dist.engine.faults import FAIL_ENV
from singe_dist.engine.loop import PruneJob
from singe_dist.engine.schedule import cumulative_fractions
from singe_dist.errors import SingeError
from singe_dist.plan.cost import measure
from singe_dist.plan.plan import Plan
from singe_dist.report import step_metrics, summary_table

from .support import DIGITS_SIZE, as_sets, run_cli, small_job_config, small_job_overrides

INPUT = (3, DIGITS_SIZE, DIGITS_SIZE)


def _job(shards, baseline, out_dir, **extra) -> PruneJob:  # noqa: ANN001
    return PruneJob(small_job_config(shards, baseline, out_dir, **extra), log=lambda _m: None)


def test_entwined_run_meets_budget_and_report_matches_the_saved_checkpoint(digits_shards, digits_baseline, tmp_path) -> None:
    out = tmp_path / "run"
    report = _job(digits_shards, digits_baseline, out, finetune__final_iters=30).run()

    steps, final = report["steps"], report["final"]
    assert [r["step"] for r in steps] == [1, 2]
    assert [round(r["target_fraction"], 6) for r in steps] == [0.25, 0.5]
    last = steps[-1]
    assert last["budget_reached"] and last["macs"] <= last["target"]
    assert last["target"] - last["macs"] < last["last_unit_cost"]  # within one channel's cost
    assert final["fraction_removed"] >= 0.5
    assert final["top1"] > last["pruned"]["top1"]  # fine-tuning recovers what pruning lost
    assert report["baseline"]["top1"] > 0.9
    assert {"cpu_b1_ms", "cpu_b8_ms"} <= set(report["latency"]["final"])
    assert set(report["wall_time_s"]) >= {"baseline_eval", "relevance", "finetune", "final_finetune", "eval", "total"}
    assert len(report["peak_memory_mb"]["rss"]) == 1 and report["peak_memory_mb"]["rss"][0] > 50  # one per rank

    # an independent re-evaluation of what was saved gives the report's numbers
    model, arch, _, plan = load_model(out / "pruned.pt")
    assert plan == Plan.load(out / "plan.json") and len(plan.steps) == 2
    fp = measure(model, INPUT)
    assert (fp.macs, fp.params) == (final["macs"], final["params"])
    config = ["--config", str(DEMO_CONFIG), *as_sets(small_job_overrides(digits_shards, None, out))]
    proc = run_cli("eval", "--checkpoint", str(out / "pruned.pt"), *config, timeout=600)
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["top1"] == final["top1"] and again["top5"] == final["top5"] and again["samples"] == 360
    assert abs(again["loss"] - final["loss"]) < 1e-6
    assert json.loads((out / "report.json").read_text())["final"] == final


def test_resume_after_a_crash_ends_with_the_same_plan_and_weights(digits_shards, digits_baseline, tmp_path, monkeypatch) -> None:
    reference = _job(digits_shards, digits_baseline, tmp_path / "ref", prune__steps=3).run()

    monkeypatch.setenv(FAIL_ENV, "1")
    with pytest.raises(RuntimeError, match="fault injection"):
        _job(digits_shards, digits_baseline, tmp_path / "crash", prune__steps=3).run()
    saved = read_checkpoint(tmp_path / "crash" / "checkpoint.pt")
    assert saved["position"] == {"step": 1, "pruned": False, "iteration": 0}
    assert not (tmp_path / "crash" / "report.json").exists()
    config = small_job_config(digits_shards, digits_baseline, tmp_path / "crash", prune__steps=3)
    resumed = PruneJob(config, resume=True, log=lambda _m: None).run()

    assert Plan.load(tmp_path / "crash" / "plan.json") == Plan.load(tmp_path / "ref" / "plan.json")
    a = read_checkpoint(tmp_path / "crash" / "pruned.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "ref" / "pruned.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["finetuned"] for r in resumed["steps"]] == [r["finetuned"] for r in reference["steps"]]


def test_skipping_the_step_evaluations_changes_the_report_only(digits_shards, digits_baseline, tmp_path) -> None:
    """``run.eval_after_step=false`` (the fair fight's cells) drops one evaluation per step and nothing else."""
    ref = _job(digits_shards, digits_baseline, tmp_path / "ref", run__eval_after_prune=False).run()
    lean = _job(digits_shards, digits_baseline, tmp_path / "lean", run__eval_after_prune=False,
                run__eval_after_step=False).run()
    assert all("finetuned" in r for r in ref["steps"]) and not any("finetuned" in r for r in lean["steps"])
    assert lean["final"] == ref["final"] and lean["baseline"] == ref["baseline"]
    a = read_checkpoint(tmp_path / "lean" / "pruned.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "ref" / "pruned.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "top1" in step_metrics(ref["steps"][0]) and "top1" not in step_metrics(lean["steps"][0])
    rows = [line.split("|") for line in summary_table(lean).splitlines() if line.startswith("| step")]
    assert [r[2].strip() for r in rows] == ["-", "-"]  # not evaluated, and said so


# one pruning step of 6 fine-tune iterations, a checkpoint after iteration 4
MID_STEP = {"prune__steps": 1, "finetune__iters_per_step": 6, "run__checkpoint_every": 4, "finetune__final_iters": 0}


def _run_keeping_the_mid_step_checkpoint(shards, baseline, out_dir: Path) -> bytes:  # noqa: ANN001
    """Run the MID_STEP job uninterrupted; the bytes of its checkpoint after iteration 4 of step 1."""
    reference = _job(shards, baseline, out_dir, **MID_STEP)
    saved: list[bytes] = []

    def keep_mid_step(path: Path, position) -> None:  # noqa: ANN001
        if position.pruned and position.iteration == 4:
            saved.append(path.read_bytes())

    reference.checkpoint_hook = keep_mid_step
    reference.run()
    assert saved, "no mid-step checkpoint was written"
    return saved[0]


def _resume_from(shards, baseline, run_dir: Path, checkpoint: bytes) -> None:  # noqa: ANN001
    """Resume the MID_STEP job in ``run_dir`` from ``checkpoint``, as if it had died there."""
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(checkpoint)
    PruneJob(small_job_config(shards, baseline, run_dir, **MID_STEP), resume=True, log=lambda _m: None).run()


def test_resume_in_the_middle_of_fine_tuning(digits_shards, digits_baseline, tmp_path) -> None:
    """Checkpoints every N iterations: a resume from one of them continues the same trajectory."""
    saved = _run_keeping_the_mid_step_checkpoint(digits_shards, digits_baseline, tmp_path / "ref")
    crashed = tmp_path / "crashed"
    _resume_from(digits_shards, digits_baseline, crashed, saved)  # as if the job died at iteration 4 of step 1
    a = read_checkpoint(crashed / "pruned.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "ref" / "pruned.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_in_the_middle_of_fine_tuning_restores_every_random_generator(
        digits_shards, digits_baseline, tmp_path, monkeypatch) -> None:
    """torch's, numpy's and Python's generators continue where the mid-step checkpoint left them."""
    import random

    import numpy as np

    import singe_dist.engine.loop as loop

    draws: list[tuple[int, float, float, float]] = []
    train_steps = loop.train_steps

    def drawing_train_steps(*args, on_step, **kwargs):  # noqa: ANN002, ANN003, ANN202
        def step(i: int, loss: float) -> None:  # one draw of each generator per iteration, before any checkpoint
            draws.append((i, float(torch.rand(1)), float(np.random.random_sample()), random.random()))
            on_step(i, loss)

        return train_steps(*args, on_step=step, **kwargs)

    monkeypatch.setattr(loop, "train_steps", drawing_train_steps)
    saved = _run_keeping_the_mid_step_checkpoint(digits_shards, digits_baseline, tmp_path / "ref")
    expected = [d for d in draws if d[0] >= 4]
    assert [d[0] for d in expected] == [4, 5]
    draws.clear()
    _resume_from(digits_shards, digits_baseline, tmp_path / "crashed", saved)
    assert draws == expected


@pytest.mark.parametrize(
    "criterion",
    [
        {"criterion__name": "singe", "criterion__path": "group"},
        {"criterion__name": "singe", "criterion__path": "channel", "criterion__max_rows": 512},
        {"criterion__name": "taylor"},
        {"criterion__name": "magnitude", "criterion__norm": 1},
        {"criterion__name": "random"},
    ],
    ids=["singe-group", "singe-channel", "taylor", "magnitude", "random"],
)
def test_every_criterion_runs_through_the_same_engine(digits_shards, digits_baseline, tmp_path, criterion) -> None:
    report = _job(digits_shards, digits_baseline, tmp_path / "run", prune__steps=1, finetune__iters_per_step=2,
                  finetune__final_iters=2, data__batch_size=16, **criterion).run()
    assert report["config"]["criterion.name"] == criterion["criterion__name"]
    assert report["final"]["fraction_removed"] >= 0.5
    assert sum(len(c) for step in Plan.load(tmp_path / "run" / "plan.json").steps for c in step.values()) > 0


def test_schedules_reach_the_budget_gradually() -> None:
    for kind in ("linear", "cosine", "exponential"):
        f = cumulative_fractions(0.6, 4, kind)
        assert f[-1] == 0.6 and all(a < b for a, b in zip(f, f[1:])) and f[0] > 0
    assert cumulative_fractions(0.6, 3, "linear") == pytest.approx([0.2, 0.4, 0.6])


def test_existing_run_directory_is_never_overwritten_unless_asked(digits_shards, digits_baseline, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("hours of work")
    with pytest.raises(SingeError, match="already exists"):
        _job(digits_shards, digits_baseline, out, prune__steps=1).run()
    assert (out / "precious.txt").read_text() == "hours of work"
    with pytest.raises(SingeError, match="cannot resume"):
        PruneJob(small_job_config(digits_shards, digits_baseline, out), resume=True).run()
    assert (out / "precious.txt").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("prune.remove_fraction=1.2", "prune.remove_fraction must be in (0, 1), got 1.2"),
        ("prune.stepz=3", "unknown config key 'prune.stepz'"),
        ("finetune.lr=fast", "finetune.lr must be a number, got 'fast'"),
        ("criterion.name=gradcam", "criterion.name must be one of"),
        ("data.train=/nonexistent/train-{000000..000003}.tar", "/nonexistent"),
    ],
)
def test_bad_config_is_one_clear_line(digits_shards, tmp_path, override: str, message: str) -> None:
    sets = small_job_overrides(digits_shards, None, tmp_path / "run") + [override]
    proc = run_cli("prune", "--config", str(DEMO_CONFIG), *as_sets(sets), timeout=600)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and message in line, line


def test_bad_baseline_checkpoint_is_one_clear_line(digits_shards, tmp_path) -> None:
    torch.save({"conv1.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pt")
    sets = small_job_overrides(digits_shards, str(tmp_path / "wrong.pt"), tmp_path / "run")
    proc = run_cli("prune", "--config", str(DEMO_CONFIG), *as_sets(sets), timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not match the model" in proc.stderr


@pytest.mark.parametrize("word", ["true", "false"])
def test_unquoted_true_false_is_the_word_for_a_choice_of_words(word: str) -> None:
    """`--set distributed.use_gpu=false` (YAML reads a bool) broke the flagship rehearsal; the word is meant."""
    assert load_config(DEMO_CONFIG, [f"distributed.use_gpu={word}"]).distributed.use_gpu == word
    with pytest.raises(SingeError, match="run.device must be one of"):
        load_config(DEMO_CONFIG, ["run.device=true"])  # no word 'true' among the choices: still refused


@pytest.mark.parametrize("path", sorted(Path(DEMO_CONFIG).parent.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_job_configs_are_valid(path: Path) -> None:
    config = load_config(path)
    assert 0 < config.prune.remove_fraction < 1 and config.distributed.num_workers >= 1


def test_recalibrate_batchnorm_estimates_statistics_of_the_pruned_network(trained_digits_model, digits_data) -> None:
    """After a removal, re-estimated BN statistics are the batch statistics of the data; nothing else moves."""
    from singe_dist.engine.train import evaluate, recalibrate_batchnorm, tensor_batches
    from singe_dist.plan.decide import Budget, prune_one_shot
    from singe_dist.relevance.criterion_config import CriterionConfig

    model = trained_digits_model
    x, y = digits_data["train"]
    prune_one_shot(model, "digits_resnet", 10, (3, DIGITS_SIZE, DIGITS_SIZE), None,
                   CriterionConfig(name="magnitude"), Budget("macs", 0.5))
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    before = evaluate(model, tensor_batches(*digits_data["val"], 128)).top1
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    momentum = first_bn.momentum
    seen = []
    hook = first_bn.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    recalibrate_batchnorm(model, tensor_batches(x[:512], y[:512], 128))
    hook.remove()
    inputs = torch.cat(seen)  # what the first BN saw, over all batches
    assert torch.allclose(first_bn.running_mean, inputs.mean((0, 2, 3)), atol=1e-5)
    assert first_bn.momentum == momentum and not model.training  # settings and mode restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # only statistics changed
    after = evaluate(model, tensor_batches(*digits_data["val"], 128)).top1
    assert after > before  # at 50% one-shot the stale statistics cost accuracy that re-estimation recovers
