"""The same mistakes from Python, and what must be kept, recorded and told (dropped rows, stopped runs, help)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bad_world import HEADER, candle_lines
from helpers import CONFIGS, run_cli, run_dir_of, small_config

from marketgpt.data import load_candles, load_universe, time_split
from marketgpt.errors import MarketGPTError
from marketgpt.tokenizer import CandleTokenizer


def test_time_split_checks_its_ratios_and_its_frame():
    candles = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=10), "close": 1.0})
    for train, val in ((1.5, 0.1), (-0.1, 0.1), (0.7, -0.1), (0.6, 0.5)):
        with pytest.raises(MarketGPTError, match="ratio"):
            time_split(candles, train, val)
    with pytest.raises(MarketGPTError, match="'date' column"):
        time_split(candles.rename(columns={"date": "day"}))


def test_load_universe_of_a_number_or_nothing():
    with pytest.raises(MarketGPTError, match="expected a case name or a CSV path, got int 123"):
        load_universe(123)
    with pytest.raises(MarketGPTError, match="no universe given"):
        load_universe("")


def test_load_universe_of_a_folder_names_it(tmp_path):
    with pytest.raises(MarketGPTError, match=str(tmp_path)):
        load_universe(tmp_path)


def test_time_split_of_a_string_ratio_or_a_negative_embargo():
    candles = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=10), "close": 1.0})
    with pytest.raises(MarketGPTError, match="train_ratio must be in \\(0, 1\\), got str '0.7'"):
        time_split(candles, "0.7", 0.1)
    with pytest.raises(MarketGPTError, match="embargo_days must be 0 \\(none\\) or a positive number of days, got -3"):
        time_split(candles, 0.7, 0.15, -3)


def test_load_candles_checks_its_bad_row_policy(world):
    with pytest.raises(MarketGPTError, match="on_bad_rows must be one of fail, drop, got 'ignore'"):
        load_candles(load_universe("sample"), "sample", world.data, policy="ignore")


def test_the_forecaster_from_python_refuses_what_it_cannot_use(world):
    from marketgpt.forecast import Forecaster

    for run in (123, None, ""):
        with pytest.raises(MarketGPTError, match="run directory: expected a path"):
            Forecaster.from_pretrained(run)
    forecaster = Forecaster.from_pretrained(world.run, "cpu")
    candles = load_candles(load_universe("sample"), "sample", world.data)
    spx = candles[candles.symbol == "SPX"]
    for as_of in (float("nan"), pd.NaT):
        with pytest.raises(MarketGPTError, match="is not a date"):
            forecaster.predict(spx, 2, 4, as_of=as_of)
    with pytest.raises(MarketGPTError, match="an empty frame"):
        forecaster.predict(spx.iloc[:0], 2, 4)
    with pytest.raises(MarketGPTError, match="categories must be a dict of symbol -> category, got list"):
        forecaster.predict(spx, 2, 4, categories=["us_stocks"])
    typo = forecaster.predict(spx.assign(symbol="NEW"), 2, 4, categories={"NEW": "us_stock"})
    assert not typo.assets and "unknown category 'us_stock'" in typo.failed["NEW"]
    new = forecaster.predict(spx.assign(symbol="NEW"), 2, 4, categories={"NEW": "crypto"})   # known, not trained
    assert list(new.assets) == ["NEW"] and not new.failed


def test_accuracy_is_a_percentage_in_the_report_tables_as_in_training():
    from marketgpt.evaluate.report import channel_table

    entry = {who: {"nll": 3.1, "accuracy": 0.0532} for who in ("model", "unigram", "unigram_per_asset", "persistence")}
    row = channel_table({"channels": {"close": entry}}).splitlines()[2]
    assert row.count("5.3%") == 4 and "0.0532" not in row


def test_a_missing_volume_is_said_at_download_and_by_training_with_use_volume(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "VOL.csv").write_text(random_walk(300, 1))
    lines = random_walk(300, 2).splitlines()
    (src / "NOVOL.csv").write_text("\n".join(",".join(line.split(",")[:5]) for line in lines) + "\n")
    universe = tmp_path / "u.csv"
    universe.write_text("symbol,category\nVOL,us_stocks\nNOVOL,us_stocks\n")
    download = run_cli("data", "download", "--universe", universe, "--provider", f"files:{src}", "--data-dir",
                       tmp_path / "data")
    assert download.returncode == 0, download.stderr
    assert f"warning: NOVOL: no volume in {src / 'NOVOL.csv'}" in download.stderr and "VOL:" not in \
        download.stderr.replace("NOVOL:", "")
    cfg = json.loads(small_config(tmp_path, model={"use_volume": True}, max_steps_per_epoch=2, epochs=1,
                                  evaluate=False).read_text())
    cfg["data"].update(universe=str(universe), provider=f"files:{src}")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    result = run_cli("train", tmp_path / "cfg.json")
    assert result.returncode == 0, result.stderr
    assert "Warning: model.use_volume is on, but 1 asset(s) have no volume" in result.stdout
    assert "no volume column in the source): NOVOL; their volume tokens carry nothing" in result.stdout
    assert json.loads((run_dir_of(result.stdout) / "data_info.json").read_text())["no_volume"] == ["NOVOL"]


def random_walk(days: int, seed: int) -> str:
    """Valid daily candles of a random walk, as CSV text."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, days)))
    opened = np.r_[100, close[:-1]] * np.exp(rng.normal(0, 0.002, days))
    high, low = np.maximum(opened, close) * 1.01, np.minimum(opened, close) * 0.99
    dates = pd.bdate_range("2015-01-01", periods=days).strftime("%Y-%m-%d")
    return HEADER + "".join(f"{d},{o:.4f},{h:.4f},{lo:.4f},{c:.4f},1000\n"
                            for d, o, h, lo, c in zip(dates, opened, high, low, close))


def test_an_edited_source_file_is_read_again_and_refresh_reads_everything(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "XYZ.csv").write_text(HEADER + candle_lines(["2020-01-02", "2020-01-03"]))
    universe = tmp_path / "u.csv"
    universe.write_text("symbol,category\nXYZ,us_stocks\n")
    argv = ["data", "download", "--universe", universe, "--provider", f"files:{src}", "--data-dir", tmp_path / "c"]
    assert run_cli(*argv).returncode == 0
    assert "1 already up to date" in run_cli(*argv).stdout
    (src / "XYZ.csv").write_text(HEADER + "2020-01-02,20,24,18,22,100\n2020-01-03,10,12,9,11,100\n")
    result = run_cli(*argv)
    assert result.returncode == 0 and "XYZ: read again from scratch (XYZ.csv changed since it was cached" in result.stdout
    cached = next((tmp_path / "c").glob("files-*/XYZ.parquet"))
    assert pd.read_parquet(cached).close.tolist() == [22.0, 11.0]
    again = run_cli(*argv, "--refresh")
    assert again.returncode == 0 and "XYZ: read again from scratch (--refresh)" in again.stdout


def test_dropped_rows_and_assets_too_short_are_recorded_in_the_run_and_printed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, symbol in enumerate(("LONG", "OTHER")):
        (src / f"{symbol}.csv").write_text(random_walk(300, i))
    (src / "SHORT.csv").write_text(random_walk(20, 7))
    bad = random_walk(300, 9).splitlines(keepends=True)
    bad[10] = bad[10].split(",")[0] + ",10,9,12,11,100\n"     # high below low
    bad[20] = bad[20].split(",")[0] + ",10,abc,9,11,100\n"    # not a number
    (src / "BAD.csv").write_text("".join(bad))
    universe = tmp_path / "u.csv"
    universe.write_text("symbol,category\nLONG,us_stocks\nOTHER,us_stocks\nSHORT,us_stocks\nBAD,us_stocks\n")
    cfg = json.loads(small_config(tmp_path, max_steps_per_epoch=2, epochs=1, evaluate=False).read_text())
    cfg["data"].update(universe=str(universe), provider=f"files:{src}", on_bad_rows="drop")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    result = run_cli("train", tmp_path / "cfg.json")
    assert result.returncode == 0, result.stderr
    assert "Dropped bad rows (on_bad_rows=drop): BAD 2 (" in result.stdout
    assert "Skipped assets (no training windows): SHORT (19 token rows, fewer than context_length + 1 = 33)" \
        in result.stdout
    run = next((tmp_path / "checkpoints").glob("tiny_*"))
    info = json.loads((run / "data_info.json").read_text())
    assert info["skipped_assets"] == ["SHORT"]
    assert info["dropped_rows"] == {"BAD": {"not_a_number": 1, "high_below_low": 1}}


def start_training(cfg: Path) -> tuple[subprocess.Popen, str]:
    """`marketgpt train CFG` running in the background, once epoch 1 is in its training log (and last.pt saved)."""
    proc = subprocess.Popen([sys.executable, "-m", "marketgpt.cli", "train", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = ""
    for line in proc.stdout:
        out += line
        if line.startswith("Time: "):
            break
    log = run_dir_of(out) / "training_log.json"
    for _ in range(300):
        if log.exists() and json.loads(log.read_text())["epochs"]:
            break
        time.sleep(0.1)
    return proc, out


def test_ctrl_c_saves_prints_the_resume_hint_and_status_says_stopped(tmp_path):
    proc, out = start_training(small_config(tmp_path, epochs=50, max_steps_per_epoch=30, evaluate=False))
    proc.send_signal(signal.SIGINT)
    out += proc.stdout.read()
    assert proc.wait() == 130, proc.stderr.read()
    run = run_dir_of(out)
    assert f"resume with --resume {run}" in out and (run / "last.pt").exists()
    status = run_cli("status", run).stdout
    assert f"stopped (resume: marketgpt train --resume {run})" in status and "ETA ?" in status, status


def test_a_killed_run_shows_crashed_not_training(tmp_path):
    proc, out = start_training(small_config(tmp_path, epochs=50, max_steps_per_epoch=30, evaluate=False))
    proc.kill()
    proc.wait()
    run = run_dir_of(out)
    status = run_cli("status", run).stdout
    assert f"crashed (resume: marketgpt train --resume {run})" in status and "ETA ?" in status, status


def test_a_run_that_fails_after_it_started_says_so(tmp_path):
    from marketgpt.run_files import end_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "x"}))
    (run / "last.pt").write_bytes(b"")
    end_run(run, RuntimeError("CUDA out of memory"), made_here=True)
    log = json.loads((run / "training_log.json").read_text())
    assert log["state"] == "failed" and log["error"] == "RuntimeError: CUDA out of memory"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    end_run(fresh, KeyboardInterrupt(), made_here=True)   # nothing to resume: no directory left behind
    assert not fresh.exists()


def test_data_info_on_an_empty_cache_says_where_it_looked(world):
    result = run_cli("data", "info", "--case", "sample", "--provider", "yfinance", "--data-dir", world.data)
    assert f"nothing cached under {world.data / 'yfinance'}" in result.stdout
    assert "candles of other providers are cached there: sample" in result.stdout


def test_the_tokenizer_refuses_descending_and_duplicate_dates():
    frame = pd.DataFrame({"date": pd.bdate_range("2020-01-01", periods=50), "open": 10.0, "high": 11.0,
                          "low": 9.0, "close": 10.0 + np.arange(50) % 3, "volume": 1.0})
    tokenizer = CandleTokenizer(16).fit(frame)
    with pytest.raises(MarketGPTError, match="earlier than row"):
        tokenizer.encode(frame.iloc[::-1])
    with pytest.raises(MarketGPTError, match="the same date as row"):
        CandleTokenizer(16).fit(pd.concat([frame.iloc[:5], frame.iloc[4:]]))


def test_every_numeric_config_key_has_a_range_and_a_readme_entry():
    from marketgpt.config import RANGES, SECTIONS

    numeric = {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
               if f.type in ("int", "float")}
    assert numeric == set(RANGES)
    readme = (CONFIGS.parent / "README.md").read_text()
    reference = readme[readme.index("## Config reference"):]
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"`{section}.{f.name}`" in reference, f"{section}.{f.name} is not in the README reference"


def test_a_job_script_written_elsewhere_runs_from_where_it_was_written(tmp_path):
    """SLURM opens the --output file before the script runs: the job's working directory is pinned (--chdir) to
    the folder that holds the log folder created with the script, so `sbatch jobs/x.sh` works from anywhere."""
    result = run_cli("slurm", CONFIGS / "sample.json", "-o", "jobs/x.sh", "--gpus-per-node", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    script = (tmp_path / "jobs" / "x.sh").read_text()
    assert f"#SBATCH --chdir={tmp_path}\n" in script and "#SBATCH --output=logs/sample_%j.out" in script
    assert (tmp_path / "logs").is_dir()
    assert subprocess.run(["bash", "-n", str(tmp_path / "jobs" / "x.sh")]).returncode == 0


def test_every_option_of_the_data_tokenizer_train_and_cluster_commands_has_help():
    import argparse

    from marketgpt.cli import build_parser

    def options(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from options(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction):
                yield " ".join(path), action

    mine = ("data", "tokenizer", "train", "slurm", "launch", "status")
    missing = [f"{cmd} {a.option_strings or a.dest}" for cmd, a in options(build_parser(), [])
               if cmd.split(" ")[0] in mine and not a.help]
    assert not missing


def test_a_run_that_ended_without_an_epoch_is_not_called_finished(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "zero", "training": {"epochs": 3}}))
    (run / "training_log.json").write_text(json.dumps({"epochs": [], "finished": True, "total_epochs": 3}))
    status = run_cli("status", run).stdout
    assert "ended before its first epoch" in status and "  finished" not in status, status
