"""The trainer: run directory artefacts, exact resume after SIGKILL, DDP equivalence, case smoke tests."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CONFIGS, ROOT, run_cli, run_dir_of, small_config

from marketgpt.checkpoint import load_checkpoint
from marketgpt.config import load_config
from marketgpt.data.universe import load_universe
from marketgpt.dataset import TokenStore
from marketgpt.distributed import Dist
from marketgpt.model import MarketGPT
from marketgpt.train import Trainer


def weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_run_directory_holds_every_artefact(tmp_path):
    result = run_cli("train", small_config(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0] == "Using CPU: 1 threads"
    assert re.search(r"Parameters: [\d,]+ total, [\d,]+ non-embedding", out)
    assert re.search(r"Epoch 4/4\nTrain Loss: \d+\.\d{3} \| Train Acc: \d+\.\d%\nVal Loss: \d+\.\d{3} \| Val Acc: "
                     r"\d+\.\d%.*\nTime: \S+ \| ETA: \S+", out)
    run = run_dir_of(out)
    assert re.fullmatch(r"tiny_\d{8}_\d{6}", run.name)
    names = {p.name for p in run.iterdir()}
    assert {"best_model.pt", "checkpoint_epoch_4.pt", "last.pt", "config.json", "tokenizer.json", "asset_info.json",
            "training_log.json", "data_info.json", "tokens", "calibration.json"} <= names
    assert "checkpoint_epoch_2.pt" not in names          # keep_checkpoints=1
    assert not [n for n in names if ".tmp" in n]
    log = json.loads((run / "training_log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3, 4]
    assert log["best_val_loss"] == min(e["val_loss"] for e in log["epochs"])
    assert log["epochs"][log["best_epoch"] - 1]["val_loss"] == log["best_val_loss"]
    config = json.loads((run / "config.json").read_text())
    assert config["run"]["versions"]["torch"] == torch.__version__ and config["run"]["train_end"] < config["run"]["val_end"]
    assets = json.loads((run / "asset_info.json").read_text())
    assert [a["symbol"] for a in assets["assets"]] == ["SPX", "IXIC", "AAPL", "GOOG", "IBM", "MSFT"]
    data_info = json.loads((run / "data_info.json").read_text())
    assert data_info["split"]["counts"]["train"] > data_info["split"]["counts"]["val"] > 0
    json.loads((run / "tokenizer.json").read_text())
    best = load_checkpoint(run / "best_model.pt")
    assert best["epoch"] == log["best_epoch"]


def start_until(cfg: Path, prefix: str) -> tuple[subprocess.Popen, list[str]]:
    """Start `marketgpt train CFG` and read its output up to the first line starting with `prefix`."""
    proc = subprocess.Popen([sys.executable, "-m", "marketgpt.cli", "train", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            break
    return proc, lines


def killed_mid_run(cfg: Path) -> Path | None:
    """Start a run and SIGKILL it somewhere inside epoch 2 or 3; its run directory, or None if it ended first or
    its last.pt was written at an epoch end (the test is about restoring the middle of an epoch)."""
    proc, lines = start_until(cfg, "Epoch 2/")
    time.sleep(random.uniform(0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = run_dir_of("".join(lines))
    if json.loads((run / "training_log.json").read_text())["finished"]:
        return None
    return run if json.loads(load_checkpoint(run / "last.pt")["state"])["step"] > 0 else None


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    cfg = small_config(tmp_path, epochs=6, last_every_steps=1)
    reference = run_cli("train", cfg)
    assert reference.returncode == 0, reference.stderr
    ref_dir = run_dir_of(reference.stdout)
    # On a loaded machine the run can end before the kill lands; such a try proves nothing, so kill a new run.
    run = next(filter(None, (killed_mid_run(cfg) for _ in range(5))), None)
    assert run is not None, "five runs in a row ended, or were killed at an epoch end, before SIGKILL reached them"
    resumed = run_cli("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed" in resumed.stdout
    a, b = weights(ref_dir / "last.pt"), weights(run / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_log = json.loads((ref_dir / "training_log.json").read_text())
    log = json.loads((run / "training_log.json").read_text())
    assert [e["val_loss"] for e in log["epochs"]] == [e["val_loss"] for e in ref_log["epochs"]]


def test_two_process_ddp_matches_one_process(tmp_path):
    cfg = small_config(tmp_path, epochs=2)
    single = run_cli("train", cfg, "--set", "training.batch_size=8", "--set", "model.dropout=0")
    assert single.returncode == 0, single.stderr
    double = run_cli("train", cfg, "--num-gpus", "2", "--set", "training.batch_size=4", "--set", "model.dropout=0")
    assert double.returncode == 0, double.stderr
    assert "x 2 processes" in double.stdout and "effective batch: 8" in double.stdout
    a, b = weights(run_dir_of(single.stdout) / "last.pt"), weights(run_dir_of(double.stdout) / "last.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)


def synthetic_store(folder: Path, context_length: int, channels: int, vocab: int, assets=2) -> None:
    rng = np.random.default_rng(0)
    n = 3 * (context_length + 2)
    tokens = rng.integers(0, vocab, size=(assets * n, channels)).astype(np.uint16)
    split = np.tile(np.repeat(np.array([0, 1, 2], dtype=np.int8), n // 3), assets)
    dates = np.tile(np.arange(n).astype("datetime64[D]"), assets)
    TokenStore(tokens, np.repeat(np.arange(assets, dtype=np.int32), n), split, dates, rng.normal(0, 0.01, len(tokens)),
               [f"A{i}" for i in range(assets)], ["crypto"] * assets, ["crypto"],
               np.full(len(tokens), 0.01)).save(folder / "tokens")   # a sigma: the case configs are scaled


@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_case_config_builds_and_takes_one_step(tmp_path, case, capsys):
    cfg = load_config(CONFIGS / f"case_{case}.json", ["training.batch_size=2"])
    synthetic_store(tmp_path, cfg.model.context_length, 4, cfg.model.vocab_size)
    trainer = Trainer(cfg, tmp_path, Dist())
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss_sum, count, _ = trainer.train_step(trainer.train_windows[:2])
    assert np.isfinite(loss_sum) and count > 0
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    m = trainer.model
    print(f"case {case}: {m.num_parameters():,} parameters, {m.num_parameters(non_embedding=True):,} non-embedding")


@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_readme_cases_table_matches_the_models_built_for_the_universes(case):
    row = re.search(rf"^\| {case.upper()} \| (\d+) \|.*\| ([\d,]+) \| ([\d,]+) \|$", (ROOT / "README.md").read_text(), re.M)
    assert row, f"README has no cases-table row for case {case}"
    universe = load_universe(case)
    cfg = load_config(CONFIGS / f"case_{case}.json")
    model = MarketGPT(cfg.model, 4, len(universe), universe["category"].nunique(), unknown=True)   # as trained
    assert int(row.group(1)) == len(universe)
    assert row.group(2) == f"{model.num_parameters():,}"
    assert row.group(3) == f"{model.num_parameters(non_embedding=True):,}"


def assert_one_error_line(result, *needles):
    """Exit 2, no traceback, and one error line (after any progress lines) holding every needle."""
    err = result.stderr.strip()
    errors = [line for line in err.splitlines() if line.startswith("marketgpt: error: ")]
    assert result.returncode == 2 and "Traceback" not in err and len(errors) == 1, err
    assert all(needle in errors[0] for needle in needles), err


def test_a_run_whose_data_cannot_be_had_fails_in_one_line_and_leaves_no_run_directory(tmp_path):
    cfg = small_config(tmp_path)
    raw = json.loads(cfg.read_text())
    (tmp_path / "csv").mkdir()
    raw["data"].update(provider=f"files:{tmp_path / 'csv'}", data_dir=str(tmp_path / "empty_cache"))
    cfg.write_text(json.dumps(raw))
    assert_one_error_line(run_cli("train", cfg), "no file for asset SPX")
    assert not any((tmp_path / "checkpoints").glob("tiny_*"))


def test_resuming_a_run_with_a_corrupt_config_fails_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": {"vocab_size": 64,')
    assert_one_error_line(run_cli("train", "--resume", run), str(run / "config.json"), "invalid JSON at line 1")


def test_sigterm_saves_and_stops_status_says_so_and_resume_finishes(tmp_path):
    cfg = small_config(tmp_path, epochs=30)
    proc, lines = start_until(cfg, "Epoch 1/")
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait() == 3, proc.stderr.read()
    run = run_dir_of(out)
    assert "Stop requested: saved" in out and (run / "last.pt").exists()
    log = json.loads((run / "training_log.json").read_text())
    assert log["stopped"] and not log["finished"]
    status = run_cli("status", run)
    assert f"stopped (resume: marketgpt train --resume {run})" in status.stdout, status.stdout
    assert_one_error_line(run_cli("train", "--resume", run, "--set", "training.epochs=3"), "not used")
    resumed = run_cli("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    log = json.loads((run / "training_log.json").read_text())
    assert log["finished"] and not log["stopped"]
    assert "finished" in run_cli("status", run).stdout
