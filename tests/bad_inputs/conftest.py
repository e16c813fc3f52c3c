"""The shared world of the bad-input tests: built once per session (a finished tiny run, the sample cached)."""

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest
from bad_world import HEADER, World, candle_lines
from helpers import run_cli


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    w = World(tmp_path_factory.mktemp("bad_inputs"))
    w.write("outside/ETH-USD.csv", HEADER + candle_lines(pd.date_range("2020-01-01", periods=40).strftime("%Y-%m-%d")))
    (w.root / "files").mkdir()
    w.write("a_file", "not a folder\n")
    w.write("universes/xyz.csv", "symbol,category\nXYZ,us_stocks\n")
    w.write("universes/two_bad.csv", "symbol,category\nAAA,us_stocks\nBBB,us_stocks\nCCC,us_stocks\n")
    w.write("universes/ccxt.csv", "symbol,category,ccxt\nBTC,crypto,BTC USDT\n")
    days = pd.date_range("2020-01-01", periods=12)
    w.write("sources/ambiguous/XYZ.csv", HEADER + candle_lines(days.strftime("%d/%m/%Y")))
    w.write("sources/hourly/XYZ.csv", HEADER + candle_lines(pd.date_range("2020-01-01", periods=300, freq="h")
                                                            .strftime("%Y-%m-%d %H:%M:%S")))
    w.write("sources/words/XYZ.csv", HEADER + candle_lines(days.strftime("%b %d %Y")))
    w.write("sources/duplicate/XYZ.csv", HEADER + candle_lines(["2020-01-02", "2020-01-03", "2020-01-06",
                                                                "2020-01-03", "2020-01-07"]))
    w.write("sources/gzip/XYZ.csv", gzip.compress((HEADER + candle_lines(days.strftime("%Y-%m-%d"))).encode()))
    pd.DataFrame({"date": days, "open": 10.0, "high": 12.0, "low": 9.0, "close": 11.0}).to_parquet(
        w.path("sources/parquet/XYZ.csv").parent.mkdir(parents=True) or w.path("sources/parquet/XYZ.csv"))
    w.write("sources/binary/XYZ.csv", bytes(range(256)) * 4)
    good = HEADER + candle_lines(days.strftime("%Y-%m-%d"))
    w.write("sources/bad/AAA.csv", good + "2020-02-01,10,9,12,11,100\n")
    w.write("sources/bad/BBB.csv", good + "2020-02-01,10,abc,9,11,100\n")
    w.write("sources/bad/CCC.csv", good)
    w.run = finished_run(w)
    for name in ("good", "broken"):
        shutil.copytree(w.run, w.path(f"status_root/{name}"))
    w.write("status_root/broken/training_log.json", '{"epochs": [')
    result = run_cli("data", "download", "--case", "sample", "--data-dir", w.data)
    assert result.returncode == 0, result.stderr
    return w


def finished_run(w: World) -> Path:
    """The tiny run of every case that must not overwrite a trained run (2 epochs of 2 steps, no evaluation)."""
    cfg = w.config("finished", training={"evaluate": False, "checkpoint_dir": str(w.path("finished"))})
    result = run_cli("train", cfg, "--run-dir", w.path("finished/run"))
    assert result.returncode == 0, result.stderr
    return w.path("finished/run")

