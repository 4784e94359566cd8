"""Data that disappears mid-run: training shards are skipped and counted, validation stops the run.

(docs/RELIABILITY.md, fault matrix.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from singe_dist.checkpoint import read_checkpoint
from singe_dist.config import load_config
from singe_dist.data.streams import DataStreams
from singe_dist.demo import DEMO_CONFIG
from singe_dist.engine.loop import PruneJob
from singe_dist.engine.run_dir import CHECKPOINT_NAME
from singe_dist.errors import SingeError

from .support import fast_job_config, same_result


@pytest.fixture()
def own_shards(digits_shards, tmp_path) -> dict[str, str]:  # noqa: ANN001
    """A private copy of the digits shards, which a test may delete."""
    copies = {}
    for split, pattern in digits_shards.items():
        source = Path(pattern).parent
        target = tmp_path / "shards"
        target.mkdir(exist_ok=True)
        for shard in source.glob(f"{split}-*.tar"):
            shutil.copy2(shard, target / shard.name)
        copies[split] = str(target / Path(pattern).name)
    return copies


def test_a_training_shard_that_disappears_is_skipped_with_a_warning_and_counted(
        own_shards, digits_baseline, tmp_path, caplog) -> None:
    gone = Path(own_shards["train"]).parent / "train-000001.tar"

    def remove(_path: Path, position) -> None:  # noqa: ANN001
        if position.step == 0 and not position.pruned:
            gone.unlink()

    config = fast_job_config(own_shards, digits_baseline, tmp_path / "run")
    with caplog.at_level("WARNING", logger="singe_dist.data.streams"):
        report = PruneJob(config, checkpoint_hook=remove, log=lambda _m: None).run()
    warnings = [r.getMessage() for r in caplog.records if "has disappeared" in r.getMessage()]
    assert warnings == [f"training shard {gone} has disappeared: it is skipped from now on (2 of 3 shards left)"]
    assert [r["skipped_samples"] for r in report["steps"]] == [1, 1]  # counted once, in the report
    assert report["final"]["samples"] == 360 and (tmp_path / "run" / "pruned.pt").is_file()


def test_all_training_shards_gone_is_one_line(own_shards) -> None:
    config = load_config(DEMO_CONFIG, [f"data.train={own_shards['train']}", f"data.val={own_shards['val']}",
                                       "data.image_size=16", "data.resize_size=16", "data.num_workers=0"])
    streams = DataStreams(config.data, 10)
    next(streams.train(0))
    for shard in Path(own_shards["train"]).parent.glob("train-*.tar"):
        shard.unlink()
    with pytest.raises(SingeError) as err:
        streams.calibration(1, 1)
    assert str(err.value).startswith("all 3 training shards have disappeared during the run (the first is ")
    assert str(err.value).endswith("train-000000.tar): restore them and continue with --resume")


def test_a_validation_shard_that_disappears_stops_the_run_and_a_resume_after_restoring_it_finishes(
        own_shards, digits_baseline, reference, tmp_path) -> None:
    val = Path(own_shards["val"].replace("{000000..000000}", "000000"))
    aside = tmp_path / "aside.tar"

    def move(_path: Path, position) -> None:  # noqa: ANN001
        if position.step == 1 and not position.pruned:
            val.rename(aside)

    run_dir = tmp_path / "run"
    config = fast_job_config(own_shards, digits_baseline, run_dir)
    with pytest.raises(SingeError) as err:
        PruneJob(config, checkpoint_hook=move, log=lambda _m: None).run()
    assert str(err.value) == (f"validation data changed during the run: 0 samples evaluated, 360 at the start "
                              f"({val} has disappeared); restore it and continue with --resume")
    assert read_checkpoint(run_dir / CHECKPOINT_NAME)["position"]["step"] == 1  # step 1's work is kept
    with pytest.raises(SingeError, match="matches no file"):  # resuming before restoring it: one line
        PruneJob(config, resume=True, log=lambda _m: None).run()
    aside.rename(val)
    PruneJob(config, resume=True, log=lambda _m: None).run()
    same_result(run_dir, reference)  # the same bytes under another path: the uninterrupted result
