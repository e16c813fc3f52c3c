"""The GARCH-t baseline logged beside each signal (past-only), and the model monitor on a replayed signal log.

The runs: a small model trained on three real index series (SPY, QQQ, DIA from ../shared/data, 2010 to October 2016),
once on the series as they are and once on a copy whose log returns from BREAK on are multiplied by 3. BREAK lies in
the test split, so both runs train on the same candles; the second one's test-split forecasts see the tripled
returns. Their one-step out-of-sample forecasts (the walk-forward's density rows, wf_outputs.one_step_tables) are
logged day by day with their baseline, the outcomes filled from the copied files, and the monitor run on the log."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli, run_dir_of, small_config

from marketgpt.serve.baseline import COLUMNS as BASELINE_COLUMNS
from marketgpt.signals import compute_signals

SERIES = (("indices", "SPY"), ("indices", "QQQ"), ("indices", "DIA"))
START, END, BREAK = "2010-01-01", "2016-10-31", "2016-05-02"


def copy_series(shared_data, folder, factor=1.0, when=BREAK, only=False):
    """The three series as files; from `when` on (or on that day only) each price p becomes ref * (p / ref)^factor,
    ref the last close before `when`: every log return from then on multiplied by `factor`."""
    for category, symbol in SERIES:
        frame = pd.read_csv(shared_data / category / f"{symbol}.csv.gz")
        dates = pd.to_datetime(frame.date)
        if factor != 1:
            ref = frame.close[dates < when].iloc[-1]
            hit = (dates == when) if only else (dates >= when)
            for col in ("open", "high", "low", "close"):
                frame.loc[hit, col] = ref * (frame.loc[hit, col] / ref) ** factor
        (folder / category).mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / category / f"{symbol}.csv", index=False)
    return folder


def universe_file(folder):
    path = folder / "three.csv"
    path.write_text("symbol,category\n" + "".join(f"{s},{c}\n" for c, s in SERIES))
    return path


def train_on(tmp, name, source):
    """A small run (20 epochs of at most 100 steps: about 6 s on 2 cores) on the series in `source`."""
    (tmp / name).mkdir()
    config = small_config(tmp / name, name, epochs=20, max_steps_per_epoch=100, batch_size=16, evaluate=False)
    raw = json.loads(config.read_text())
    raw["data"].update(universe=str(universe_file(tmp)), provider=f"files:{source}", start=START, end=END)
    config.write_text(json.dumps(raw))
    result = run_cli("train", config)
    assert result.returncode == 0, result.stderr
    return run_dir_of(result.stdout)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "manifest.csv").exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    tmp = tmp_path_factory.mktemp("monitor")
    source = copy_series(SHARED_DATA, tmp / "src_base")
    return {"tmp": tmp, "source": source, "run": train_on(tmp, "base", source), "shared": SHARED_DATA}


def _baseline(run, universe, source, as_of):
    table, _ = compute_signals(run, universe=str(universe), provider=f"files:{source}", as_of=as_of,
                               names=("1d", "1w", "1m"), samples=8, device="cpu")
    return table.set_index(["symbol", "horizon"])[["baseline", *BASELINE_COLUMNS]].sort_index()


def test_the_logged_baseline_uses_the_past_only(real):
    tmp, as_of = real["tmp"], "2016-06-01"
    universe = universe_file(tmp)
    base = _baseline(real["run"], universe, real["source"], as_of)
    assert (base.baseline == "garch_t").all() and np.isfinite(base[BASELINE_COLUMNS].to_numpy()).all()
    q = base[[f"baseline_return_{q}" for q in ("q05", "q25", "q75", "q95")]].to_numpy()
    assert (np.diff(q, axis=1) > 0).all()                                   # quantiles in order
    wider = base.xs("1m", level="horizon").baseline_return_q95 > base.xs("1d", level="horizon").baseline_return_q95
    assert wider.all()                                                      # a month spreads more than a day
    after = copy_series(real["shared"], tmp / "src_after", factor=3.0, when="2016-06-02")
    pd.testing.assert_frame_equal(_baseline(real["run"], universe, after, as_of), base)
    before = copy_series(real["shared"], tmp / "src_before", factor=1.5, when="2016-05-02", only=True)
    changed = _baseline(real["run"], universe, before, as_of)
    assert not np.allclose(changed[BASELINE_COLUMNS].to_numpy(), base[BASELINE_COLUMNS].to_numpy())
