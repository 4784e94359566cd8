"""Wall time of the demo (`singe-dist demo`, what `make demo` runs), split by phase.

Runs the demo from scratch in an empty temporary directory (shards and baseline are written anew),
as a subprocess in this environment (as `make demo` runs it: no OMP_NUM_THREADS added), and splits its wall time with the times at which the demo's
own ``[1/3]``, ``[2/3]``, ``[3/3]`` lines appear, the launcher's ``launch_s`` (Ray start, worker-group
start) and the loop's ``wall_time_s`` from ``report.json``. ``--repo`` runs another checkout's demo
(e.g. a ``git worktree`` of an older commit, for a before/after comparison).

    uv run python benchmarks/demo_time.py [--repo PATH] [--json out.json] [--label after]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(repo: Path, python: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="singe-demo-time-") as tmp:
        # the environment as it is (no OMP_NUM_THREADS added): what `make demo` sees
        env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
        marks: dict[str, float] = {}
        lines: list[str] = []
        t0 = time.perf_counter()
        proc = subprocess.Popen([python, "-m", "singe_dist.cli", "demo"], cwd=tmp, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - t0
            lines.append(line.rstrip("\n"))
            for tag in ("[1/3]", "[2/3]", "[3/3]"):
                if line.startswith(tag):
                    marks[tag] = now
            if line.startswith("wrote "):
                marks["wrote"] = now
        code = proc.wait()
        total = time.perf_counter() - t0
        if code != 0:
            sys.exit("the demo failed:\n" + "\n".join(lines[-40:]))
        report = json.loads((Path(tmp) / "runs" / "demo" / "prune" / "report.json").read_text())
    walls = report.get("wall_time_s", {})
    launch = report.get("launch_s", {})
    first = min(marks.get(tag, total) for tag in ("[1/3]", "[2/3]", "[3/3]"))
    phases = {
        "start-up before [1/3] (imports; now also Ray's start)": first,
        "shards (write the digits)": marks["[2/3]"] - marks["[1/3]"],
        "baseline training": marks["[3/3]"] - marks["[2/3]"],
        "pruning job, from [3/3] to its last line": marks.get("wrote", total) - marks["[3/3]"],
        "  Ray runtime start": launch.get("ray_start_s"),
        "  worker-group start (from the launch)": launch.get("workers_start_s"),
        "  (shards + baseline while the workers start)": launch.get("prepare_s"),
        "  baseline evaluation": walls.get("baseline_eval"),
        "  relevance (all steps)": walls.get("relevance"),
        "  fine-tuning (all steps)": walls.get("finetune"),
        "  evaluations": walls.get("eval"),
        "  final fine-tune": walls.get("final_finetune"),
        "  loop total (rank 0)": walls.get("total"),
        "exit (Ray shutdown)": total - marks.get("wrote", total),
        "total (process start to exit)": total,
    }
    table = [line for line in lines if line.startswith("|")]
    return {"phases": phases, "table": table, "final_top1": report["final"]["top1"],
            "baseline_top1": report["baseline"]["top1"], "lines": len(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose demo runs (default: this one)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the project's packages")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--label", default="", help="a name for this measurement")
    args = parser.parse_args()
    result = run(args.repo.resolve(), args.python)
    print(f"demo wall time{' (' + args.label + ')' if args.label else ''}: {args.repo.resolve()}")
    print("| phase | seconds |")
    print("|---|---|")
    for name, seconds in result["phases"].items():
        print(f"| {name} | {'' if seconds is None else f'{seconds:.1f}'} |")
    print(f"\nbaseline top-1 {result['baseline_top1']:.4f}, pruned top-1 {result['final_top1']:.4f}; "
          f"{result['lines']} lines of output")
    print("\n".join(result["table"]))
    if args.json:
        args.json.write_text(json.dumps({"label": args.label, **result}, indent=1))


if __name__ == "__main__":
    main()
