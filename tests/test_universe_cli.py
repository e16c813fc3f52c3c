"""Universes of the cases, user universes, and the CLI's one-line errors."""

import re
import subprocess
import sys

import pytest

from marketgpt.cli import main
from marketgpt.data import load_universe
from marketgpt.errors import MarketGPTError

EXPECTED = {
    "a": {"us_stocks": 300, "eu_stocks": 150, "emerging": 50, "commodities": 30, "crypto": 70},
    "b": {"us_stocks": 50, "crypto": 20, "commodities": 15, "emerging": 15},
    "c": {"crypto": 20},
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_case_universes(case):
    universe = load_universe(case)
    assert universe.category.value_counts().to_dict() == EXPECTED[case]
    assert universe.symbol.is_unique and (universe.yfinance != "").all()
    crypto = universe[universe.category == "crypto"]
    assert (crypto.ccxt.str.endswith("/USDT")).all() and (universe[universe.category != "crypto"].ccxt == "").all()


def test_case_c_is_the_design_list():
    assert load_universe("c").symbol.tolist() == (
        "BTC ETH BNB XRP ADA DOGE SOL TRX DOT MATIC LTC SHIB AVAX UNI LINK ATOM XLM BCH FIL APT".split())


def test_smaller_cases_are_subsets_of_a():
    a = set(load_universe("a").symbol)
    assert set(load_universe("b").symbol) <= a and set(load_universe("c").symbol) <= a


@pytest.mark.parametrize("text, message", [
    ("symbol,category\nAAA,\n", "line 2: asset AAA has no category"),
    ("symbol,name\nAAA,x\n", "missing column(s) category"),
    ("symbol,category\nAAA,crpyto\n", "unknown category 'crpyto'"),
    ("symbol,category\nAAA,crypto\nAAA,crypto\n", "duplicate symbol 'AAA'"),
    ("symbol,category\n", "no assets"),
])
def test_bad_user_universe(tmp_path, text, message):
    path = tmp_path / "u.csv"
    path.write_text(text)
    with pytest.raises(MarketGPTError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_universe(str(path))


def test_cli_data_info_lists_case_a_offline(tmp_path, capsys):
    assert main(["data", "info", "--case", "a", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "total: 600 assets, 0 cached" in out
    per_category = dict(re.findall(r"^\s*(\w+)\s+(\d+)\s+0\s+0\s+0\s+0$", out.split("category")[-1], re.M))
    assert per_category == {"us_stocks": "300", "eu_stocks": "150", "emerging": "50", "commodities": "30",
                            "crypto": "70"}


def test_cli_sample_download_then_info(tmp_path, capsys):
    assert main(["data", "download", "--case", "sample", "--data-dir", str(tmp_path)]) == 0
    assert main(["data", "info", "--case", "sample", "--data-dir", str(tmp_path)]) == 0
    assert "total: 6 assets, 6 cached, 22020 candles" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["data", "info", "--case", "nosuch"], "unknown universe 'nosuch'"),
    (["data", "download", "--case", "sample", "--provider", "nosuch"], "unknown provider 'nosuch'"),
    (["data", "download", "--case", "sample", "--provider", "files:/no/such/dir"], "does not exist"),
])
def test_cli_errors_are_one_line_without_traceback(tmp_path, argv, message):
    result = subprocess.run([sys.executable, "-m", "marketgpt.cli", *argv, "--data-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_download_reports_unknown_ticker_and_exits_nonzero(tmp_path):
    universe = tmp_path / "u.csv"
    universe.write_text("symbol,category\nGOOG,us_stocks\nNOPE,us_stocks\n")
    result = subprocess.run([sys.executable, "-m", "marketgpt.cli", "data", "download", "--universe", str(universe),
                             "--provider", "sample", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "failed NOPE: sample: unknown ticker 'NOPE'" in result.stderr
    assert (tmp_path / "sample" / "GOOG.parquet").exists()
