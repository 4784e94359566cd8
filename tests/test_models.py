"""The user's own model, ``model.arch: "package.module:factory"`` (singe_dist/models.py build_model)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from torch import nn

from singe_dist.checkpoint import load_model, save_checkpoint
from singe_dist.cli import main
from singe_dist.config import load_config
from singe_dist.errors import SingeError
from singe_dist.models import build_model
from singe_dist.plan.decide import Budget, prune_one_shot
from singe_dist.plan.plan import replay
from singe_dist.relevance.criteria import CriterionConfig

from .support import DIGITS_SIZE, REPO_ROOT, pruned_widths, run_cli

EXAMPLE = "jobs.my_model:small_cnn"  # the example of jobs/ and the README
INPUT = (3, DIGITS_SIZE, DIGITS_SIZE)


@pytest.fixture()
def isolated_imports(monkeypatch):  # noqa: ANN001, ANN201
    """sys.path and sys.modules as they were after the test (build_model puts the working directory first)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("user_", "jobs")):
            del sys.modules[name]


def test_an_import_path_model_builds_prunes_saves_and_reloads_by_plan_replay(isolated_imports, monkeypatch,
                                                                              digits_data, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.chdir(REPO_ROOT)  # the job's working directory: jobs/my_model.py is importable from it
    torch.manual_seed(0)
    model = build_model(EXAMPLE, 10).eval()
    assert type(model).__name__ == "SmallCNN" and model.head[-1].out_features == 10
    x, y = digits_data["train"][0][:64], digits_data["train"][1][:64]
    plan, _ = prune_one_shot(model, EXAMPLE, 10, INPUT, [(x, y)], CriterionConfig(name="magnitude"),
                             Budget("macs", 0.4))
    assert plan.arch == EXAMPLE and plan.steps[0]
    save_checkpoint(tmp_path / "pruned.pt", model, EXAMPLE, 10, plan)
    monkeypatch.chdir(tmp_path)  # loading imports it again from sys.modules / the path it was found on
    again, arch, classes, ck_plan = load_model(tmp_path / "pruned.pt")
    assert (arch, classes, ck_plan.digest()) == (EXAMPLE, 10, plan.digest())
    assert pruned_widths(again) == pruned_widths(model) == pruned_widths(replay(plan))
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model(x))


def test_the_cli_rebuilds_an_import_path_model_in_a_fresh_process(isolated_imports, monkeypatch, digits_shards,
                                                                   tmp_path, capsys) -> None:  # noqa: ANN001
    """`singe-dist relevance --model`, `export` (fresh processes in the repository root) and `eval`."""
    monkeypatch.chdir(REPO_ROOT)
    model = build_model(EXAMPLE, 10).eval()
    plan, _ = prune_one_shot(model, EXAMPLE, 10, INPUT, None, CriterionConfig(name="magnitude"), Budget("macs", 0.3))
    save_checkpoint(tmp_path / "pruned.pt", model, EXAMPLE, 10, plan)
    proc = run_cli("relevance", "--model", EXAMPLE, "--num-classes", "10", "--criterion", "magnitude",
                   "--image-size", str(DIGITS_SIZE), "--out", str(tmp_path / "scores.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "scores.json").read_text())["model"] == EXAMPLE
    proc = run_cli("export", "--checkpoint", str(tmp_path / "pruned.pt"), "--onnx", str(tmp_path / "m.onnx"))
    assert proc.returncode == 0 and (tmp_path / "m.onnx").is_file(), proc.stderr
    assert main(["eval", "--config", str(REPO_ROOT / "jobs/configs/custom_model.yaml"), "--checkpoint",
                 str(tmp_path / "pruned.pt"), "--set", f"data.val={digits_shards['val']}",
                 "--set", f"data.image_size={DIGITS_SIZE}", "--set", f"data.resize_size={DIGITS_SIZE}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arch"] == EXAMPLE and result["plan_steps"] == 1 and 0 <= result["top1"] <= 1


def _user_module(tmp_path, name: str, body: str) -> None:  # noqa: ANN001
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


@pytest.mark.parametrize("spec,says", [
    ("user_x:", "is not an import path: expected 'package.module:factory'"),
    (":factory", "is not an import path"),
    ("user-x:factory", "is not an import path"),
    ("user_x:a:b", "is not an import path"),
    ("user_missing:factory", "no module named 'user_missing' in the working directory {cwd}"),
    ("user_pkg_missing.sub:factory", "no module named 'user_pkg_missing' in the working directory {cwd}"),
    ("user_deps:factory", "importing user_deps failed: ModuleNotFoundError: No module named 'not_installed_dep' "
                          "(user_deps.py:2)"),
    ("user_syntax:factory", "importing user_syntax failed: SyntaxError"),
    ("user_ok:nothing", "user_ok.py has no attribute 'nothing'"),
    ("user_ok:CONSTANT", "CONSTANT is not callable (type int)"),
    ("user_ok:not_a_module", "not_a_module(num_classes=10) returned a dict, not a torch.nn.Module"),
    ("user_ok:no_keyword", "no_keyword(num_classes=10) raised TypeError: no_keyword() got an unexpected keyword "
                           "argument 'num_classes'"),
    ("user_ok:broken", "broken(num_classes=10) raised ValueError: bad width (user_ok.py:"),
])
def test_import_path_errors_are_one_line(isolated_imports, monkeypatch, tmp_path, spec: str, says: str) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    _user_module(tmp_path, "user_deps", "\nimport not_installed_dep\n")
    _user_module(tmp_path, "user_syntax", "def factory(num_classes:\n")
    _user_module(tmp_path, "user_ok", """
        from torch import nn
        CONSTANT = 3
        def not_a_module(num_classes):
            return {"classes": num_classes}
        def no_keyword(n):
            return nn.Linear(4, n)
        def broken(num_classes):
            raise ValueError("bad width")
        """)
    with pytest.raises(SingeError) as err:
        build_model(spec, 10)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"model {spec!r}"), message
    assert says.format(cwd=tmp_path) in message
    assert "models.py" not in message  # a place in the user's code, never in ours


def test_the_config_accepts_an_import_path_and_refuses_a_malformed_one_before_importing() -> None:
    assert load_config(None, [f"model.arch={EXAMPLE}"]).validate().model.arch == EXAMPLE
    with pytest.raises(SingeError, match=r"^config model.arch: model 'jobs/my_model.py:small_cnn' is not an import"):
        load_config(None, ["model.arch=jobs/my_model.py:small_cnn"]).validate()  # a path, not a module
    with pytest.raises(SingeError, match="or give your own as 'package.module:factory'"):
        build_model("my_model", 10)


def test_a_checkpoint_of_an_import_path_model_names_the_module_when_it_cannot_be_found(
        isolated_imports, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "job").mkdir()
    _user_module(tmp_path / "job", "user_net", """
        from torch import nn
        def net(num_classes):
            return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, num_classes))
        """)
    monkeypatch.chdir(tmp_path / "job")
    save_checkpoint(tmp_path / "net.pt", build_model("user_net:net", 10), "user_net:net", 10)
    assert isinstance(load_model(tmp_path / "net.pt")[0], nn.Sequential)
    del sys.modules["user_net"]
    sys.path.remove(str(tmp_path / "job"))
    monkeypatch.chdir(tmp_path)  # elsewhere, the module is not importable
    with pytest.raises(SingeError, match=f"no module named 'user_net' in the working directory {tmp_path}"):
        load_model(tmp_path / "net.pt")
