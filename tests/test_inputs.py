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


# ---------------------------------------------------------------------------------- ray job submit --working-dir
def _refused_keys(copy, *overrides: str) -> list[str]:  # noqa: ANN001
    """The keys check_working_dir_paths refuses for jobs/configs/demo.yaml plus ``overrides`` ([] if none)."""
    from singe_dist.config import load_config
    from singe_dist.preflight import check_working_dir_paths

    try:
        check_working_dir_paths(load_config(DEMO_CONFIG, list(overrides)), copy)
    except SingeError as exc:
        message = str(exc)
        assert "\n" not in message and "deleted after the job" in message and "git-ignored" in message
        assert "absolute path on storage that every node sees" in message and message.endswith("or a URL")
        return [item.split("=", 1)[0] for item in message.split(": under `ray job submit`")[0].split(", ")]
    return []


def test_ray_job_working_dir_copy_refuses_relative_paths_it_lacks_or_would_lose(tmp_path, monkeypatch) -> None:
    """Unit half of tests/test_ray_job.py's local-head test: which paths are refused, and when."""
    from singe_dist.preflight import RAY_JOB_CONFIG_ENV, working_dir_copy

    copy, outside = tmp_path / "_ray_pkg_0123", tmp_path / "shared"
    (copy / "jobs" / "data").mkdir(parents=True)
    for name in ("a-0.tar", "a-1.tar", "b.pt"):
        (copy / "jobs" / "data" / name).write_bytes(b"")
    outside.mkdir()
    absolute = [f"data.train={outside}/t-{{0..1}}.tar", f"data.val={outside}/v.tar", f"model.checkpoint={outside}/b.pt",
                f"run.out_dir={outside}/run"]

    # the command: every path of the demo config is relative and missing from the copy
    assert _refused_keys(copy) == ["data.train", "data.val", "model.checkpoint", "run.out_dir"]
    assert _refused_keys(copy, *absolute) == []
    assert _refused_keys(copy, *absolute[:3]) == ["run.out_dir"]
    # inputs: files of the copy (tracked in git) are fine; outside it, or missing, they are not; URLs are fine
    assert _refused_keys(copy, *absolute[1:], "data.train=jobs/data/a-{0..1}.tar,file:jobs/data/a-0.tar",
                         "model.checkpoint=jobs/data/b.pt") == []
    assert _refused_keys(copy, *absolute, "data.train=jobs/data/a-{0..2}.tar", "data.val=../shared/v.tar",
                         "model.checkpoint=https://host/b.pt") == ["data.train", "data.val"]
    # outputs: never relative, never inside the copy
    assert _refused_keys(copy, *absolute[:3], f"run.out_dir={copy}/runs/x", "distributed.storage_path=ray",
                         "tracking.uri=sqlite:///runs/mlflow.db") == ["run.out_dir", "distributed.storage_path",
                                                                      "tracking.uri"]
    for uri in ("file:mlruns", "mlruns"):
        assert _refused_keys(copy, *absolute, f"tracking.uri={uri}") == ["tracking.uri"]
    for fine in ("tracking.uri=sqlite:////abs/mlflow.db", "tracking.uri=http://127.0.0.1:5000",
                 "distributed.storage_path=s3://bucket/ray", "tracking.uri=mlruns tracking.enabled=false"):
        assert _refused_keys(copy, *absolute, *fine.split()) == [], fine
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert _refused_keys(copy, *absolute) == ["MLFLOW_TRACKING_URI"]

    # the copy is the cwd of an entrypoint whose runtime env has a working dir that Ray unpacked
    monkeypatch.chdir(copy)
    monkeypatch.delenv(RAY_JOB_CONFIG_ENV, raising=False)
    assert working_dir_copy() is None  # not under `ray job submit`
    for working_dir, expected in (("gcs://_ray_pkg_0123.zip", copy), ("local:///mnt/shared/code", None), (None, None)):
        monkeypatch.setenv(RAY_JOB_CONFIG_ENV, json.dumps({"runtime_env": {"working_dir": working_dir}, "metadata": {}}))
        assert working_dir_copy() == expected, working_dir
