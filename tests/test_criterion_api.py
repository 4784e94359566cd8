"""A criterion is one object, named in ``criterion.name``: built-ins by name, your own as "package.module:Class".

The user criteria below live in this test module and are named ``tests.test_criterion_api:...``, as a
job names a class in its working directory.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from singe_dist.config import load_config
from singe_dist.engine.loop import PruneJob
from singe_dist.errors import SingeError
from singe_dist.models import build_model
from singe_dist.plan.decide import Budget, prune_one_shot
from singe_dist.relevance.criterion_config import CriterionConfig
from singe_dist.relevance.criteria import Criterion, Magnitude, score
from singe_dist.relevance.groups import example_input, find_groups
from singe_dist.relevance.registry import BUILTIN, make_criterion

from .support import DEMO_CONFIG, DIGITS_SIZE, run_cli, small_job_overrides

ROOT = Path(__file__).resolve().parents[1]
INPUT = (3, DIGITS_SIZE, DIGITS_SIZE)


class HeaviestFirst(Criterion):
    """Magnitude L2 reversed: the channels magnitude would keep go first. Counts its calls."""

    calls = 0

    def finalize(self, model, groups, sums):  # noqa: ANN001, ANN201
        HeaviestFirst.calls += 1
        return {gid: -s for gid, s in Magnitude(self.config).finalize(model, groups, None).items()}


class NotACriterion:
    pass


def test_your_own_criterion_prunes_what_it_scores_lowest() -> None:
    torch.manual_seed(0)
    model = build_model("digits_resnet", 10)
    groups = find_groups(model, example_input(model, INPUT))
    magnitude = score(make_criterion(CriterionConfig(name="magnitude")), model, groups, None)
    config = CriterionConfig(name="tests.test_criterion_api:HeaviestFirst")
    assert isinstance(make_criterion(config), HeaviestFirst)
    plan, selection = prune_one_shot(model, "digits_resnet", 10, INPUT, None, config, Budget("macs", 0.3))
    removed = plan.steps[0]
    assert sum(map(len, removed.values())) > 0
    for gid, channels in removed.items():  # each group loses its heaviest channels, the ones magnitude keeps
        heaviest = torch.argsort(magnitude[gid], descending=True)[: len(channels)].tolist()
        assert sorted(channels) == sorted(heaviest), gid


def test_a_job_prunes_with_a_criterion_defined_in_a_test_module(digits_shards, digits_baseline, tmp_path) -> None:
    HeaviestFirst.calls = 0
    config = load_config(DEMO_CONFIG, small_job_overrides(digits_shards, digits_baseline, tmp_path / "run",
                                                          criterion__name="tests.test_criterion_api:HeaviestFirst",
                                                          finetune__iters_per_step=2, finetune__final_iters=2))
    report = PruneJob(config, log=lambda _m: None).run()
    assert report["config"]["criterion.name"] == "tests.test_criterion_api:HeaviestFirst"
    assert HeaviestFirst.calls == config.prune.steps  # scored once per step
    assert report["steps"][-1]["macs"] <= report["steps"][-1]["target"]


@pytest.mark.parametrize(("name", "words"), [
    ("gradcam", ["criterion.name must be one of", "magnitude, singe, singe_weights, taylor, random", "'gradcam'"]),
    ("tests.test_criterion_api:NotACriterion", ["is not a subclass of", "Criterion"]),
    ("tests.test_criterion_api:Missing", ["has no attribute 'Missing'"]),
    ("tests.no_such_module:X", ["no module named 'tests.no_such_module'"]),
    ("tests.test_criterion_api:Not-a-class", ["is not an import path", "'package.module:Class'"]),
])
def test_a_criterion_that_cannot_be_built_is_refused_in_one_line_when_the_config_loads(name: str, words: list[str]) -> None:
    with pytest.raises(SingeError) as exc:
        load_config(None, [f"criterion.name={name}"])
    message = str(exc.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_the_criterion_has_one_default_and_data_free_criteria_need_no_batches(trained_digits_model) -> None:
    from singe_dist.config import JobConfig

    assert JobConfig().criterion.name == CriterionConfig().name == "magnitude"
    groups = find_groups(trained_digits_model, example_input(trained_digits_model, INPUT))
    for name in BUILTIN:
        criterion = make_criterion(CriterionConfig(name=name))
        if criterion.needs_data:
            with pytest.raises(SingeError, match="needs calibration data"):
                score(criterion, trained_digits_model, groups, None)
        else:
            scores = score(criterion, trained_digits_model, groups, None)
            assert {g.id for g in groups} == set(scores)


def test_no_code_compares_a_criterions_name_outside_the_registry() -> None:
    """The registry is the one place a name means something (issue 27): no `name == "singe"` elsewhere."""
    names = "|".join(BUILTIN)
    compare = re.compile(rf"""(==|!=|\bin\b)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in (ROOT / "singe_dist").rglob("*.py") if path.name != "registry.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if compare.search(line)]
    assert found == []


def test_relevance_on_a_truncated_shard_prints_the_one_line_count(digits_shards, digits_baseline, tmp_path) -> None:
    """`singe-dist relevance` reads what a shard holds before its break and says how much it skipped, in the
    line a pruning job's report counts."""
    source = Path(digits_shards["train"].replace("{000000..000002}", "000000"))
    shard = tmp_path / "train-000000.tar"
    shutil.copy(source, shard)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 10)  # inside the shard: its first 50 images are readable
    out = tmp_path / "r.json"
    proc = run_cli("relevance", "--config", str(DEMO_CONFIG), "--criterion", "singe", "--steps", "2",
                   "--samples", "64", "--out", str(out),
                   *[a for s in small_job_overrides({"train": str(shard), "val": digits_shards["val"]},
                                                    digits_baseline, tmp_path / "run") for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("data: ")]
    found = [re.fullmatch(r"data: (\d+) corrupt sample\(s\) or broken shard\(s\) skipped", line) for line in lines]
    assert len(found) == 1 and found[0] and int(found[0].group(1)) >= 1, proc.stdout  # once per draw of the shard
    result = json.loads(out.read_text())
    assert result["skipped"] == int(found[0].group(1)) and result["samples"] == 64
