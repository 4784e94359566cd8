"""Inputs a user gets wrong or writes differently than the tests' defaults, through the real CLI."""

from __future__ import annotations

import json
import random
import pytest

from singe_dist.checkpoint import read_checkpoint
from singe_dist.data.shards import expand_shards, split_shard_list
from singe_dist.demo import DEMO_CONFIG
from singe_dist.errors import SingeError

from .support import as_sets, run_cli, small_job_overrides


def test_shard_lists_are_comma_or_double_colon_separated_and_braces_keep_their_commas(tmp_path) -> None:
    for name in ("a.tar", "b-0.tar", "b-1.tar", "c-x.tar", "c-y.tar"):
        (tmp_path / name).write_bytes(b"")
    t = str(tmp_path)
    assert split_shard_list(f"{t}/a.tar,{t}/b-{{0..1}}.tar") == [f"{t}/a.tar", f"{t}/b-{{0..1}}.tar"]
    assert split_shard_list("s3://bucket/c-{x,y}.tar") == ["s3://bucket/c-{x,y}.tar"]
    assert expand_shards(f"{t}/a.tar, {t}/b-{{0..1}}.tar::{t}/c-{{x,y}}.tar") == [
        f"{t}/a.tar", f"{t}/b-0.tar", f"{t}/b-1.tar", f"{t}/c-x.tar", f"{t}/c-y.tar"]
    with pytest.raises(SingeError, match=r"^1 of 2 shards do not exist, the first is .*/nope\.tar$"):
        expand_shards(f"{t}/a.tar,{t}/nope.tar")


def test_a_comma_separated_shard_list_on_the_command_line_runs_the_job(digits_shards, digits_baseline, tmp_path) -> None:
    train = expand_shards(digits_shards["train"])
    assert len(train) >= 2
    out = tmp_path / "run"
    sets = small_job_overrides(digits_shards, digits_baseline, out, prune__steps=1, data__train=",".join(train))
    proc = run_cli("prune", "--config", str(DEMO_CONFIG), *as_sets(sets))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["config"]["data.train"] == ",".join(train)


def test_prune_refuses_an_unloadable_checkpoint_before_creating_anything(digits_shards, tmp_path) -> None:
    bad = tmp_path / "inputs" / "baseline.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    work = tmp_path / "work"
    work.mkdir()
    sets = small_job_overrides(digits_shards, str(bad), work / "run", tracking__enabled="true")
    assert not any(s.startswith("tracking.uri") for s in sets)  # the default: an SQLite file beside the run
    proc = run_cli("prune", "--config", str(DEMO_CONFIG), *as_sets(sets))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"singe-dist prune: error: checkpoint {bad} cannot be loaded"), lines
    assert list(work.iterdir()) == []  # no mlflow.db, no run directory


def test_a_file_of_random_bytes_is_not_a_pytorch_checkpoint(tmp_path) -> None:
    data = random.Random(0).randbytes(4096)
    assert data[:2] != b"PK" and data[0] != 0x80
    path = tmp_path / "random.pt"
    path.write_bytes(data)
    with pytest.raises(SingeError) as info:
        read_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path} is not a PyTorch checkpoint "
                               "(neither a zip archive nor a pickle, as torch.save writes)")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(SingeError, match=r"is not a PyTorch checkpoint \(an empty file\)$"):
        read_checkpoint(tmp_path / "empty.pt")
    proc = run_cli("relevance", "--checkpoint", str(path), "--model", "digits_resnet", "--num-classes", "10",
                   "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"singe-dist relevance: error: checkpoint {path} is not a PyTorch checkpoint "
        "(neither a zip archive nor a pickle, as torch.save writes)"]


def test_relevance_reads_the_jobs_config_model_and_shards(digits_shards, digits_baseline, tmp_path) -> None:
    out = tmp_path / "relevance.json"
    sets = small_job_overrides(digits_shards, digits_baseline, tmp_path / "unused", criterion__calibration_batches=2,
                               criterion__name="taylor")
    proc = run_cli("relevance", "--config", str(DEMO_CONFIG), *as_sets(sets), "--steps", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["model"] == "digits_resnet" and data["checkpoint"] == digits_baseline
    assert data["data"] == digits_shards["train"]
    assert data["samples"] == 2 * 32  # criterion.calibration_batches x data.batch_size of the overrides
    assert data["criterion"]["name"] == "taylor" and data["criterion"]["steps"] == 3  # config, then the flag
    assert "layers.0.conv1" in data["groups"]
    assert not (tmp_path / "unused").exists()  # relevance writes only its JSON

    # a shard pattern that matches nothing is the job's own one-line error
    proc = run_cli("relevance", "--config", str(DEMO_CONFIG), *as_sets(sets), "--set", "data.train=/nonexistent/x-{0..1}.tar",
                   "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "singe-dist relevance: error: shard pattern /nonexistent/x-{0..1}.tar matches no file"]
