"""The fine-tuning schedule keys (``finetune.lr*``) set the learning rate a job trains at, iteration by iteration."""

from __future__ import annotations

import math

import pytest

from singe_dist.engine.lr import LrSchedule
from singe_dist.errors import SingeError

from .support import small_job_config


def test_shapes_follow_their_formulas() -> None:
    cosine, linear = LrSchedule(0.1, 10, "cosine"), LrSchedule(0.1, 10, "linear")
    assert cosine(0) == pytest.approx(0.1) and cosine(5) == pytest.approx(0.05) and cosine(10) == pytest.approx(0.0)
    assert linear(0) == pytest.approx(0.1) and linear(4) == pytest.approx(0.06) and linear(12) == 0.0
    assert [LrSchedule(0.2, 10, "constant")(i) for i in (0, 9)] == [0.2, 0.2]
    step = LrSchedule(0.01, 10, "step", milestones=(0.6, 0.8), gamma=0.1)
    assert [round(step(i), 8) for i in (0, 5, 6, 7, 8, 9)] == [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]
    warm = LrSchedule(0.1, 10, "constant", warmup=4)
    assert [warm(i) for i in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert LrSchedule(0.1, 10, "cosine", offset=5)(0) == pytest.approx(cosine(5))


def _rates(shards, baseline, tmp_path, monkeypatch, **keys) -> list[float]:  # noqa: ANN001
    """The learning rate of every fine-tuning iteration of a 2-step job (4 + 4 + 4 iterations)."""
    import singe_dist.engine.loop as loop
    from singe_dist.engine.loop import PruneJob

    rates: list[float] = []
    train_steps = loop.train_steps

    def recording(model, optimizer, *args, on_step, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        def step(i: int, loss: float) -> None:
            rates.append(optimizer.param_groups[0]["lr"])
            on_step(i, loss)

        return train_steps(model, optimizer, *args, on_step=step, **kwargs)

    monkeypatch.setattr(loop, "train_steps", recording)
    config = small_job_config(shards, baseline, tmp_path / "run", finetune__iters_per_step=4, finetune__final_iters=4,
                              prune__steps=2, **keys)
    PruneJob(config, log=lambda _m: None).run()
    return rates


def test_default_restarts_a_cosine_from_the_peak_in_every_phase(digits_shards, digits_baseline, tmp_path,
                                                                 monkeypatch) -> None:
    rates = _rates(digits_shards, digits_baseline, tmp_path, monkeypatch, finetune__lr=0.02)
    phase = [0.5 * 0.02 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    assert rates == pytest.approx(phase * 3)


def test_job_span_step_shape_and_warmup(digits_shards, digits_baseline, tmp_path, monkeypatch) -> None:
    """One step schedule over all 12 iterations: 2 of warm-up to 0.05, then /10 half-way through the other 10."""
    rates = _rates(digits_shards, digits_baseline, tmp_path, monkeypatch, finetune__lr=0.05,
                   finetune__lr_shape="step", finetune__lr_span="job", finetune__warmup_iters=2,
                   finetune__lr_milestones="[0.5]", finetune__lr_gamma=0.1)
    assert rates == pytest.approx([0.025, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.005, 0.005, 0.005, 0.005, 0.005])


def test_rewind_takes_the_last_iterations_of_the_training_schedule(digits_shards, digits_baseline, tmp_path,
                                                                    monkeypatch) -> None:
    """Renda et al.'s rewinding: 12 fine-tuning iterations at the rates of training iterations 88..99."""
    rates = _rates(digits_shards, digits_baseline, tmp_path, monkeypatch, finetune__lr_rewind="true",
                   finetune__lr=0.5, train__lr=0.1, train__iters=100)
    assert rates == pytest.approx([0.5 * 0.1 * (1 + math.cos(math.pi * (88 + i) / 100)) for i in range(12)])


@pytest.mark.parametrize(("key", "value", "words"), [
    ("finetune.lr_shape", "exp", "finetune.lr_shape"),
    ("finetune.lr_milestones", "[0.8, 0.6]", "finetune.lr_milestones must be increasing"),
    ("finetune.lr_gamma", "0", "finetune.lr_gamma must be in (0, 1]"),
    ("finetune.warmup_iters", "-1", "finetune.warmup_iters must be >= 0"),
])
def test_a_bad_schedule_key_is_one_line_naming_it(key: str, value: str, words: str) -> None:
    from singe_dist.config import load_config
    from singe_dist.demo import DEMO_CONFIG

    with pytest.raises(SingeError, match=None) as caught:
        load_config(DEMO_CONFIG, [f"{key}={value}"])
    assert words in str(caught.value) and "\n" not in str(caught.value)
