"""A walk-forward as a SLURM job array: the scripts `marketgpt slurm --walkforward` writes, its one-line errors,
and on the real single-node SLURM (.ci/slurm-setup.sh, see tests/test_cluster.py) a 2-fold walk-forward submitted
with --submit: the array's tasks, then the stitch job after them."""

import json
import re
import subprocess

import pandas as pd
import pytest
from helpers import run_cli, small_config
from test_cluster import CPU_JOB, assert_one_error_line, bash_syntax_ok, sbatch_lines, wait_for_job
from test_cluster import sample_data, slurm  # noqa: F401  (fixtures)

WF = ["--walkforward", "--folds", "2", "--test-days", "30", "--horizons", "1"]


def _config(folder, data):
    """A tiny config reading the session's cached sample data."""
    config = small_config(folder, "wfs", epochs=2, max_steps_per_epoch=3)
    raw = json.loads(config.read_text())
    raw["data"]["data_dir"] = str(data)
    config.write_text(json.dumps(raw))
    return config


def test_walkforward_scripts_hold_the_plan_the_array_and_the_stitch_job(tmp_path, sample_data):  # noqa: F811
    config = _config(tmp_path, sample_data)
    result = run_cli("slurm", config, *WF, "--max-parallel", "1", *CPU_JOB, "--partition", "debug", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    wf_dir = tmp_path / "checkpoints" / "wfs_walkforward"
    plan = json.loads((wf_dir / "walkforward.json").read_text())        # planned at submit time
    assert [f["name"] for f in plan["folds"]] == ["fold_00", "fold_01"] and plan["settings"]["test_days"] == 30
    array = (tmp_path / "logs" / "wfs_walkforward.sh").read_text()
    lines = sbatch_lines(array)
    for expected in ("--array=0-1%1", "--requeue", "--signal=B:USR1@300", "--output=logs/wfs_walkforward_%A_%a.out",
                     "--cpus-per-task=1", "--mem=1G"):
        assert expected in lines, (expected, lines)
    assert f"WF_DIR={wf_dir}" in array and "--fold \"$FOLD\" -o \"$WF_DIR\"" in array
    assert "WF_ARGS=(--folds 2 --test-days 30 --val-days 30 --mode expanding --embargo 5 --horizons 1" in array
    assert "scontrol requeue \"$SLURM_JOB_ID\"" in array and "trap on_usr1 USR1" in array
    stitch = (tmp_path / "logs" / "wfs_walkforward_stitch.sh").read_text()
    assert f"walkforward --stitch -o {wf_dir}" in stitch and "--array" not in stitch
    assert not any(line.startswith(("--gres", "--requeue")) for line in sbatch_lines(stitch))
    assert "sbatch --dependency=afterok:$jid logs/wfs_walkforward_stitch.sh" in result.stdout
    for name in ("wfs_walkforward.sh", "wfs_walkforward_stitch.sh"):
        bash_syntax_ok(tmp_path / "logs" / name)
    again = run_cli("slurm", config, *WF, "--test-days", "20", *CPU_JOB, cwd=tmp_path)    # another plan, same dir
    assert_one_error_line(again, "holds another walk-forward (test_days")


@pytest.mark.parametrize("args, needle", [
    (["--folds", "3"], "--folds applies to a walk-forward: add --walkforward"),
    (["--walkforward", "--nodes", "2"], "a fold trains in one process on one node"),
    (["--walkforward", "--gpus-per-node", "2"], "--gpus-per-node 0 or 1"),
    (["--walkforward", "-o", "-"], "give -o a path"),
    (["--walkforward", "--max-parallel", "0"], "--max-parallel"),
])
def test_bad_walkforward_array_options_are_one_line(tmp_path, args, needle):
    result = run_cli("slurm", small_config(tmp_path), *args, cwd=tmp_path)
    assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_walkforward_array_and_stitch_job_on_slurm(slurm, tmp_path, sample_data):  # noqa: F811
    config = _config(tmp_path, sample_data)
    result = run_cli("slurm", config, *WF, *CPU_JOB, "--partition", slurm, "--submit", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    array, stitch = re.search(r"submitted the folds: job (\d+); the stitch job (\d+)", result.stdout).groups()
    logs = tmp_path / "logs"
    assert wait_for_job(stitch, logs / f"wfs_walkforward_stitch_{stitch}.out", timeout=300) in ("COMPLETED", "")
    texts = {p.name: p.read_text() for p in logs.glob(f"wfs_walkforward_{array}_*.out")}
    assert sorted(texts) == [f"wfs_walkforward_{array}_{i}.out" for i in (0, 1)], texts
    for i in (0, 1):
        assert f"(fold {i}): fold finished" in texts[f"wfs_walkforward_{array}_{i}.out"]
    wf_dir = tmp_path / "checkpoints" / "wfs_walkforward"
    plan = json.loads((wf_dir / "walkforward.json").read_text())
    assert plan["status"] == {"fold_00": "done", "fold_01": "done"}
    assert [r["fold"] for r in plan["summary"]["folds"]] == ["fold_00", "fold_01", "all folds"]
    oos = pd.read_parquet(wf_dir / "oos.parquet")
    assert set(oos.fold) == {0, 1} and set(oos.horizon) == {1} and len(oos) == plan["summary"]["oos_rows"]
    for fold in plan["folds"]:
        mine = oos[oos.fold == fold["index"]]
        assert mine.date.min() >= pd.Timestamp(fold["test_start"]) and mine.date.max() <= pd.Timestamp(fold["test_end"])
    assert "all folds" in (logs / f"wfs_walkforward_stitch_{stitch}.out").read_text()
    subprocess.run(["scancel", array, stitch], capture_output=True)
