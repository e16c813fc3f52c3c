"""Walk-forward folds beyond one cold run: --warm-start (fold f from fold f-1's best weights, recorded, refused out
of order, serialised as a SLURM array) and --seeds S (S ordinary runs per fold and their ensemble as the fold)."""

import hashlib
import json
import shutil

import pandas as pd
import pytest
import torch
from helpers import run_cli, small_config

from marketgpt.errors import MarketGPTError
from marketgpt.walkforward import make_plan, walkforward

QUIET = {"log": lambda *a, **k: None}
PLAN = {"folds": 2, "test_days": 30, "horizons": ()}


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wfstarts")
    config = small_config(tmp, "ws", epochs=2, max_steps_per_epoch=4)
    assert run_cli("data", "download", "--case", "sample", "--data-dir", tmp / "data").returncode == 0
    return tmp, config


def _weights(run_dir):
    return torch.load(run_dir / "best_model.pt", weights_only=True)["model"]


def test_warm_start_starts_fold_1_from_fold_0_and_records_it(cached):
    tmp, config = cached
    cold = walkforward(config, tmp / "cold", **PLAN, **QUIET)
    warm = make_plan(config, tmp / "warm", **PLAN, warm_start=True, **QUIET)
    with pytest.raises(MarketGPTError, match="fold_00 is not done, and fold_01 starts from its weights"):
        walkforward(config, warm, **PLAN, warm_start=True, only_fold=1, **QUIET)
    shutil.copytree(cold / "fold_00", warm / "fold_00")            # fold 0 is the same cold or warm
    shutil.copytree(cold / "universes", warm / "universes", dirs_exist_ok=True)
    walkforward(config, warm, **PLAN, warm_start=True, **QUIET)

    fold = json.loads((warm / "fold_01" / "fold.json").read_text())
    assert fold["status"] == "done" and fold["warm_start_from"] == "fold_00" and isinstance(fold["same_bins"], bool)
    parent = json.loads((warm / "fold_01" / "config.json").read_text())["run"]["parent"]
    digest = hashlib.sha256((warm / "fold_00" / "best_model.pt").read_bytes()).hexdigest()
    assert parent["warm_start_from"] == "fold_00" and parent["best_model_sha256"] == digest
    plan = json.loads((warm / "walkforward.json").read_text())
    assert plan["warm_start_from"] == {"fold_00": None, "fold_01": "fold_00"}
    assert plan["settings"]["warm_start"] is True and "warm_start" not in json.loads(
        (cold / "walkforward.json").read_text())["settings"]

    def first_val(wf):
        return json.loads((wf / "fold_01" / "training_log.json").read_text())["epochs"][0]["val_loss"]

    # the same 4 steps after fold 0's 8 leave fold 1 better off than the same 4 from a random start
    assert first_val(warm) < first_val(cold)
    a, b = _weights(cold / "fold_01"), _weights(warm / "fold_01")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_warm_start_array_runs_one_fold_at_a_time(cached):
    tmp, config = cached
    result = run_cli("slurm", config, "--walkforward", "--folds", "2", "--test-days", "30", "--horizons", "1",
                     "--warm-start", "--max-parallel", "2", "--gpus-per-node", "0", "--wf-dir", tmp / "warm_array",
                     cwd=tmp)
    assert result.returncode == 0, result.stderr
    script = (tmp / "logs" / "ws_walkforward.sh").read_text()
    assert "#SBATCH --array=0-1%1" in script and "--warm-start" in script


def test_seeds_train_runs_per_fold_and_score_their_ensemble(cached):
    tmp, config = cached
    out = walkforward(config, tmp / "seeds", folds=1, test_days=30, horizons=(), seeds=2, **QUIET)
    fold_dir = out / "fold_00"
    seeds = [fold_dir / "seed_0", fold_dir / "seed_1"]
    for run in seeds:
        assert json.loads((run / "training_log.json").read_text())["finished"]
    used = [json.loads((r / "config.json").read_text())["training"]["seed"] for r in seeds]
    assert used[1] == used[0] + 1
    assert (seeds[0] / "tokenizer.json").read_bytes() == (seeds[1] / "tokenizer.json").read_bytes()
    a, b = _weights(seeds[0]), _weights(seeds[1])
    assert not all(torch.equal(a[k], b[k]) for k in a)
    members = json.loads((fold_dir / "ensemble" / "ensemble.json").read_text())["members"]
    assert [m["path"] for m in members] == [str(r.resolve()) for r in seeds]
    record = json.loads((fold_dir / "fold.json").read_text())
    assert record["seeds"] == ["seed_0", "seed_1"] and record["ensemble"] == "ensemble"
    results = json.loads((fold_dir / "ensemble" / "test_results.json").read_text())
    assert record["test_loss"] == results["test_loss"]
    rows = results["ensemble"]["rows"]
    assert rows["ensemble"]["nll"] <= rows["members' mean"]["nll"] + 1e-9       # a linear pool's log score
    oos = pd.read_parquet(out / "oos.parquet")
    assert set(oos.model) == {"ensemble"} and len(oos) == json.loads((out / "walkforward.json").read_text())[
        "summary"]["oos_rows"]
    again = run_cli("walkforward", config, "--folds", "1", "--test-days", "30", "--horizons", "1", "-o", out)
    assert again.returncode == 2 and "seeds differ" in again.stderr      # the plan knows its seeds


def test_zero_seeds_is_one_line(cached):
    tmp, config = cached
    result = run_cli("walkforward", config, "--seeds", "0", "-o", tmp / "zero")
    assert result.returncode == 2 and "--seeds" in result.stderr and len(result.stderr.strip().splitlines()) == 1
