"""Entrypoint for `ray job submit`: the main pruning job on the cluster's Ray Train workers.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/prune.py --config jobs/configs/resnet50_imagenet.yaml [--set key=value ...] [--resume]

Inside a submitted job, Ray sets RAY_ADDRESS, so the job joins the cluster it was submitted to. The job runs
in Ray's copy of the working dir (no git-ignored files, deleted after the job): paths in the config must be
absolute on storage that every node sees, or URLs; a relative one is refused before anything starts
(singe_dist.preflight.check_working_dir_paths; docs/CLUSTER.md shows the demo on a local head).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, if not pip-installed

from singe_dist.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["prune", *sys.argv[1:]]))
