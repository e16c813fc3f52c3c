"""Evaluation: baselines (GARCH-t, random walk, unigram, persistence), the model's close-return density, and the
sample run of `make demo` end to end (results JSON, plots, report numbers equal to the JSON, CLI errors, compare)."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import is_png
from hypothesis import given, settings
from hypothesis import strategies as st

from marketgpt import evaluate as E
from marketgpt import metrics as M
from marketgpt.baselines import (
    fit_garch_t,
    garch_t,
    garch_t_expanding,
    garch_variance,
    persistence_scores,
    persistence_weight,
    random_walk,
    target_rows,
    unigram_scores,
)
from marketgpt.dataset import TokenStore, make_windows


# --- helpers ----------------------------------------------------------------------------------------
def simulate_garch_t(n, mu=0.03, omega=0.05, alpha=0.10, beta=0.85, nu=5.0, seed=0):
    """Percent returns of a GARCH(1,1) with standardized Student-t errors."""
    rng = np.random.default_rng(seed)
    z = rng.standard_t(nu, n + 500) * math.sqrt((nu - 2) / nu)
    x, s2 = np.empty(n + 500), omega / (1 - alpha - beta)
    for t in range(n + 500):
        x[t] = mu + math.sqrt(s2) * z[t]
        s2 = omega + alpha * (x[t] - mu) ** 2 + beta * s2
    return x[500:]


def make_store(tokens_per_asset, split_per_asset, categories=None):
    tokens = np.concatenate(tokens_per_asset).astype(np.uint16)
    asset = np.concatenate([np.full(len(t), i, dtype=np.int32) for i, t in enumerate(tokens_per_asset)])
    split = np.concatenate(split_per_asset).astype(np.int8)
    dates = np.concatenate([np.arange(len(t)) for t in tokens_per_asset]).astype("datetime64[D]")
    n = len(tokens_per_asset)
    cats = categories or ["crypto"] * n
    returns = np.zeros(len(tokens))
    return TokenStore(tokens, asset, split, dates, returns, [f"A{i}" for i in range(n)], cats, sorted(set(cats)))


def split_of(n, train=0.7, val=0.15):
    a, b = int(n * train), int(n * (train + val))
    return np.r_[np.zeros(a), np.ones(b - a), np.full(n - b, 2)].astype(np.int8)


# --- return-level baselines --------------------------------------------------------------------------
def test_garch_t_beats_the_random_walk_on_garch_returns():
    n = 3000
    r = np.concatenate([simulate_garch_t(n, seed=1), simulate_garch_t(n, alpha=0.08, beta=0.9, seed=2)]) / 100
    split = np.concatenate([split_of(n), split_of(n)])
    asset = np.repeat([0, 1], n)
    loc, scale, df, fits = garch_t(r, split, asset, 2)
    rw_loc, rw_scale = random_walk(r, split, asset, 2)
    test = split == 2
    g_nll = M.student_t_nll(r[test], loc[test], scale[test], df[test])
    rw_nll = M.gaussian_nll(r[test], rw_loc[test], rw_scale[test])
    for a in (0, 1):
        mine = asset[test] == a
        assert g_nll[mine].mean() < rw_nll[mine].mean() - 0.02           # nats per day
        assert 0.85 < fits[a]["alpha"] + fits[a]["beta"] < 1 and 3 < fits[a]["nu"] < 9
    assert M.diebold_mariano(g_nll, rw_nll).statistic < -2
    # the random walk is the training mean and std of each asset
    assert rw_loc[0] == pytest.approx(r[:n][split[:n] == 0].mean())
    assert rw_scale[0] == pytest.approx(r[:n][split[:n] == 0].std(ddof=1))


def test_garch_variance_equals_arch_and_uses_the_past_only():
    from arch import arch_model

    r = simulate_garch_t(2500, seed=3) / 100
    split = split_of(2500)
    params = fit_garch_t(r[split == 0])
    keys = ["mu", "omega", "alpha", "beta", "nu"]
    fixed = arch_model(100 * r[split == 0], mean="Constant", vol="GARCH", p=1, q=1, dist="t").fix(
        [params[k] for k in keys])
    mine = garch_variance(100 * r[split == 0], params)
    assert np.allclose(mine, fixed.conditional_volatility ** 2, rtol=1e-10, atol=0)
    # day t's variance depends on returns before t only
    full = garch_variance(100 * r, params)
    k = 2000
    changed = r.copy()
    changed[k:] *= 5
    again = garch_variance(100 * changed, params)
    assert np.array_equal(full[:k + 1], again[:k + 1]) and not np.allclose(full[k + 1:], again[k + 1:])
    # no refit on val/test: scaling the test returns leaves parameters and the first test day's forecast alone
    loc1, scale1, _, fits1 = garch_t(r, split, np.zeros(2500, dtype=int), 1)
    r2 = r.copy()
    r2[split == 2] *= 3
    loc2, scale2, _, fits2 = garch_t(r2, split, np.zeros(2500, dtype=int), 1)
    first_test = int(np.flatnonzero(split == 2)[0])
    assert fits1[0] == fits2[0]
    assert np.array_equal(scale1[:first_test + 1], scale2[:first_test + 1])


def test_too_short_training_period_gives_no_garch():
    r = np.random.default_rng(0).normal(0, 0.01, 300)
    split = np.r_[np.zeros(100), np.full(200, 2)].astype(np.int8)
    loc, scale, df, fits = garch_t(r, split, np.zeros(300, dtype=int), 1)
    assert fits[0] == {"unusable": "100 training returns, fewer than 250"} and np.isnan(scale).all()


def test_expanding_garch_covers_late_listed_assets_and_uses_the_past_only():
    r = np.concatenate([simulate_garch_t(2500, seed=4), simulate_garch_t(600, seed=5)]) / 100
    split = np.concatenate([split_of(2500), np.r_[np.zeros(100), np.full(500, 2)]]).astype(np.int8)
    asset = np.repeat([0, 1], [2500, 600])
    loc, scale, df, info = garch_t_expanding(r, split, asset, 2, scored=2, refit_every=63)
    late = asset == 1
    assert np.isnan(garch_t(r, split, asset, 2)[1][late]).all()       # no training-period fit for the late asset
    pos = np.arange(600)
    assert np.isnan(scale[late][pos < 250]).all() and np.isfinite(scale[late][pos >= 250]).all()
    assert info[1] == {"fits": math.ceil(350 / 63), "unusable": 0, "missing": 150}
    test0 = (asset == 0) & (split == 2)
    assert np.isnan(scale[split != 2]).all() and np.isfinite(scale[test0]).all()
    fixed = garch_t(r, split, asset, 2)                 # one stationary process: both fits forecast alike
    assert np.median(scale[test0] / fixed[1][test0]) == pytest.approx(1, abs=0.1)
    nll = M.student_t_nll(r[test0], loc[test0], scale[test0], df[test0]).mean()
    assert nll == pytest.approx(M.student_t_nll(r[test0], *(p[test0] for p in fixed[:3])).mean(), abs=0.02)
    k = int(np.flatnonzero((asset == 0) & (split == 2))[100])           # a test day inside the second refit block
    later = r.copy()
    later[k:2500] *= 4
    again = garch_t_expanding(later, split, asset, 2, scored=2, refit_every=63)
    assert all(np.array_equal(a[:k + 1], b[:k + 1], equal_nan=True) for a, b in zip((loc, scale, df), again))
    assert not np.allclose(scale[k + 64:2500], again[1][k + 64:2500])
    earlier = r.copy()
    earlier[k - 1] *= 4
    assert garch_t_expanding(earlier, split, asset, 2, scored=2, refit_every=63)[1][k] != scale[k]


# --- the model's density of the close return --------------------------------------------------------
def test_tail_rule_puts_the_training_median_at_the_tail_median():
    edges = np.array([-0.1, -0.02, 0.0, 0.02, 0.1])
    values = np.array([-0.25, -0.05, -0.01, 0.01, 0.05, 0.13])
    d = E.CloseDensity(edges, values)
    assert d.tail_scale[0] == pytest.approx(0.15 / math.log(2))         # 0.216 > neighbour width 0.08
    assert d.tail_scale[1] == pytest.approx(0.08)                       # 0.03/ln2 = 0.043 < width 0.08: floor
    probs = np.full((1, 6), 1 / 6)
    assert d.cdf(probs, [-0.25])[0] == pytest.approx(probs[0, 0] / 2)   # half the outer bin's mass beyond v0
    assert np.isfinite(d.nll(np.tile(probs, (2, 1)), [-3.0, 3.0])).all()


def test_oracle_beats_uniform():
    rng = np.random.default_rng(0)
    V, df, scale = 64, 4.0, 0.01
    from scipy import stats

    inner = stats.t.ppf(np.arange(1, V) / V, df, scale=scale * 2)       # bins not matched to the truth
    values = np.concatenate([[inner[0] - 0.01], (inner[1:] + inner[:-1]) / 2, [inner[-1] + 0.01]])
    d = E.CloseDensity(inner, values)
    y = stats.t.rvs(df, scale=scale, size=4000, random_state=rng)
    oracle = np.diff(np.concatenate([[0.0], stats.t.cdf(inner, df, scale=scale), [1.0]]))
    P_oracle, P_uniform = np.tile(oracle, (len(y), 1)), np.full((len(y), V), 1 / V)
    assert d.nll(P_oracle, y).mean() < d.nll(P_uniform, y).mean() - 0.1
    assert d.crps(P_oracle, y).mean() < 0.9 * d.crps(P_uniform, y).mean()
    # token level: NLL of the true token probabilities (~ entropy) < log V
    tokens = np.searchsorted(inner, y, side="right")
    assert -np.log(oracle[tokens]).mean() < math.log(V) - 0.1


# --- token-level baselines ---------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(0, 2 ** 31 - 1), st.floats(0.05, 5.0))
def test_a_uniform_model_never_beats_the_unigram(V, seed, concentration):
    """On the training period the (add-one smoothed) unigram's NLL is at most log V: a uniform model never beats
    it, whatever the token distribution."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(V, concentration), size=2)
    lengths = rng.integers(2, 200, size=3)
    tokens = [np.stack([rng.choice(V, n, p=p[0]), rng.choice(V, n, p=p[1])], 1) for n in lengths]
    store = make_store(tokens, [np.zeros(n) for n in lengths])
    rows = target_rows(store, 0)
    for per_asset in (False, True):
        nll, _ = unigram_scores(store, rows, V, per_asset=per_asset)
        assert (nll.mean(0) <= math.log(V) + 1e-12).all()


class UniformModel(torch.nn.Module):
    def __init__(self, V):
        super().__init__()
        self.V = V
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens, asset, category, targets=None, **inputs):
        B, T, C = tokens.shape
        assert inputs["weekday"].shape == (B, T)    # scoring hands every model the weekdays (dataset.gather_inputs)
        return torch.zeros(B, T, C, self.V), None


def test_scoring_a_uniform_model():
    rng = np.random.default_rng(0)
    V, n = 8, 300
    tokens = [rng.integers(0, V, size=(n, 2)) for _ in range(2)]
    store = make_store(tokens, [split_of(n), split_of(n)])
    edges = np.linspace(-0.03, 0.03, V - 1)
    d = E.CloseDensity(edges, np.concatenate([[-0.04], (edges[1:] + edges[:-1]) / 2, [0.04]]))
    returns = np.concatenate([edges, [0.0]])[np.asarray(store.tokens[:, 0], dtype=int)] - 1e-4
    windows = make_windows(store, "test", 16)
    s = E.score_model(UniformModel(V), store, windows, 16, d, returns, batch_size=5)
    rows = target_rows(store, 2)
    assert np.array_equal(s["row"], rows)                               # every test target once, in row order
    assert np.allclose(s["nll"], math.log(V))
    uni, _ = unigram_scores(store, rows, V)
    results = E.summarize(store, s, returns, "test", V, ["close", "open"], log=lambda *a: None)
    assert results["test_loss"] == pytest.approx(math.log(V))
    assert results["unigram_loss"] == pytest.approx(uni.mean())
    assert results["channels"]["close"]["model"]["nll"] >= results["channels"]["close"]["unigram"]["nll"] - 0.05
    assert results["headline"]["assets_with_garch_t"] == 0              # 210 training returns < 250: no GARCH


def test_persistence_baseline():
    rng = np.random.default_rng(1)
    V, n = 16, 600
    sticky = np.repeat(rng.integers(0, V, n // 10), 10)                 # each token repeats 10 times
    iid = rng.integers(0, V, n)
    store = make_store([np.stack([sticky, iid], 1)], [split_of(n)])
    lam = persistence_weight(store, V)
    assert lam[0] > 0.7 and lam[1] < 0.1
    rows = target_rows(store, 2)
    nll, hit = persistence_scores(store, rows, V, weight=lam)
    uni, _ = unigram_scores(store, rows, V)
    assert nll[:, 0].mean() < uni[:, 0].mean() - 1.0
    tok = np.asarray(store.tokens).astype(int)
    assert np.array_equal(hit, tok[rows] == tok[rows - 1])
    from marketgpt.baselines import unigram_probs

    u = unigram_probs(store, V)
    i = 5
    expected = -math.log(lam[0] * hit[i, 0] + (1 - lam[0]) * u[0, tok[rows[i], 0]])
    assert nll[i, 0] == pytest.approx(expected)


# --- end to end --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(demo_run):
    """The run of `make demo` (trained once per session, see conftest.py)."""
    return demo_run


def report_tables(text: str) -> dict:
    """{section title: (header, rows)} of the markdown tables in a report."""
    tables, title, lines = {}, None, text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            title = line[3:].strip()
        elif line.startswith("| ") and lines[i + 1].startswith("|---") and title:
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("| "):
                    break
                rows.append([c.strip() for c in row.strip("|").split("|")])
            tables[title] = (header, rows)
    return tables


def check_cell(cell: str, value, fmt: str):
    assert cell == E.format_value(value, fmt)
    if value is None:
        assert cell == "n/a"
    elif not isinstance(value, bool) and fmt != "d":
        decimals = int(re.search(r"\.(\d+)", fmt).group(1))
        if fmt.endswith("g"):
            assert float(cell) == pytest.approx(value, rel=10.0 ** (1 - decimals))
        elif fmt.endswith("%"):
            assert cell.endswith("%") and abs(float(cell[:-1]) / 100 - value) <= 0.51 * 10.0 ** -(decimals + 2)
        else:
            assert abs(float(cell) - value) <= 0.51 * 10.0 ** -decimals
    else:
        assert int(cell) == value


def test_run_evaluation_writes_results_plots_and_report(run):
    run_dir, stdout = run
    results = json.loads((run_dir / "test_results.json").read_text())
    assert {"test_loss", "test_accuracy", "channels", "returns", "headline", "plots"} <= set(results)
    ch = results["channels"]
    assert list(ch) == ["close", "open", "upper", "lower"]
    assert results["test_loss"] == pytest.approx(np.mean([c["model"]["nll"] for c in ch.values()]))
    assert results["test_accuracy"] == pytest.approx(np.mean([c["model"]["accuracy"] for c in ch.values()]))
    for entry in ch.values():
        assert set(entry) == {"model", "unigram", "unigram_per_asset", "persistence"}
    per_asset = results["returns"]["per_asset"]
    assert set(per_asset) <= {"SPX", "IXIC", "AAPL", "GOOG", "IBM", "MSFT"} and per_asset
    h = results["headline"]
    compared = [a for a in per_asset.values() if a["beats_garch_t_nll"] is not None]
    assert h["assets_with_garch_t"] == len(compared)
    assert h["assets_beating_garch_t_nll"] == sum(a["model"]["nll"] < a["garch_t"]["nll"] for a in compared)
    ov = results["returns"]["overall"]
    assert ov["n"] == results["targets"] == sum(a["n"] for a in per_asset.values())
    assert ov["skill"]["nll_vs_garch_t"] == pytest.approx(ov["garch_t"]["nll"] - ov["model"]["nll"])
    assert ov["skill"]["crps_vs_garch_t"] == pytest.approx(1 - ov["model"]["crps"] / ov["garch_t"]["crps"])
    assert sum(ov["model"]["pit_histogram"]) == pytest.approx(1.0)
    lo, hi = ov["direction"]["wilson_95"]
    assert lo <= ov["direction"]["hit_rate"] <= hi
    # plots are real PNG images
    assert set(results["plots"]) == {"training_curves", "calibration", "skill_vs_garch_t"}
    for name in results["plots"].values():
        assert is_png(run_dir / name)
    # the CLI prints the headline
    assert E.headline(results) in stdout and "report: " in stdout


def test_the_sample_run_beats_the_training_unigram_on_val_and_test(run):
    run_dir, stdout = run
    unigram_val = float(re.search(r"Unigram baseline val loss: (\d+\.\d+)", stdout).group(1))
    assert json.loads((run_dir / "training_log.json").read_text())["best_val_loss"] < unigram_val
    results = json.loads((run_dir / "test_results.json").read_text())
    assert results["test_loss"] < np.mean([c["unigram"]["nll"] for c in results["channels"].values()])


def test_report_numbers_equal_the_json(run):
    run_dir, _ = run
    results = json.loads((run_dir / "test_results.json").read_text())
    text = (run_dir / "report.md").read_text()
    tables = report_tables(text)
    groups = E.group_rows(results)
    checked = 0
    for title, (header, rows) in tables.items():
        if title.startswith("Close-to-close return"):
            columns = {"NLL": E.NLL_COLUMNS, "CRPS": E.CRPS_COLUMNS, "interval": E.CALIBRATION_COLUMNS}
            spec = next(v for k, v in columns.items() if k in title)
            assert header == ["group", *[c[0] for c in spec]]
            assert [r[0] for r in rows] == [g[0] for g in groups]
            for row, (_, block) in zip(rows, groups):
                for cell, (_, path, fmt) in zip(row[1:], spec):
                    check_cell(cell, E.get_path(block, path), fmt)
                    checked += 1
        elif title.startswith("Per channel"):
            assert [r[0] for r in rows] == list(results["channels"])
            for row in rows:
                for cell, (_, path, fmt) in zip(row[1:], E.CHANNEL_COLUMNS):
                    check_cell(cell, E.get_path(results["channels"][row[0]], path), fmt)
                    checked += 1
        elif title.startswith("PIT"):
            ov = results["returns"]["overall"]
            for k, row in enumerate(rows):
                for cell, who in zip(row[1:], ("model", "random_walk", "garch_t")):
                    check_cell(cell, ov[who]["pit_histogram"][k], ".4f")
                    checked += 1
    assert checked > 100
    h = results["headline"]
    assert f"model beats GARCH-t on NLL for {h['assets_beating_garch_t_nll']}/{h['assets_with_garch_t']} assets" in text
    assert f"test loss {results['test_loss']:.4f}" in text
    for name in results["plots"].values():
        assert f"]({name})" in text


def test_val_evaluation_matches_the_training_log(run):
    run_dir, _ = run
    results = E.evaluate_run(run_dir, "val", log=lambda *a: None, plots=False)
    log = json.loads((run_dir / "training_log.json").read_text())
    # the trainer's val loss is the model as trained; evaluation scores it with the close temperature (and widths, if
    # they passed their check) fitted on the same val targets at the end of training, which lowers the close
    # channel's share of the mean by exactly the fit's gain
    cal = json.loads((run_dir / "calibration.json").read_text())
    after = (cal["close_width"] or cal)["val_close_nll_after"]
    gain = (cal["val_close_nll_before"] - after) / len(results["channels"])
    assert results["channels"]["close"]["model"]["nll"] == pytest.approx(after, rel=1e-5)
    assert results["val_loss"] == pytest.approx(log["best_val_loss"] - gain, rel=1e-5)
    best = log["epochs"][log["best_epoch"] - 1]
    # a temperature keeps every argmax, a width can move the close channel's: the other channels' accuracy is the log's
    names = list(results["channels"])
    for k, name in enumerate(names):
        if k or cal["close_width"] is None:
            assert results["channels"][name]["model"]["accuracy"] == pytest.approx(
                best["val_accuracy_per_channel"][k], abs=1e-9)
    assert (run_dir / "val_results.json").exists() and (run_dir / "val_report.md").exists()
    table = E.compare_runs([run_dir, run_dir], log=lambda *a: None)
    assert len(table) == 2 and table["name"].tolist() == ["sample", "sample"]
    assert table["loss"].iloc[0] == json.loads((run_dir / "test_results.json").read_text())["test_loss"]
    assert "NLL skill vs GARCH-t" in E.format_compare(table)
    assert f"{table['accuracy'].iloc[0]:.1%}" in E.format_compare(table)     # a percentage, as training prints it


def test_errors_are_one_line(run, tmp_path, capsys):
    from marketgpt.cli import main

    run_dir, _ = run
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (no_weights / name).write_bytes((run_dir / name).read_bytes())
    cases = [(["evaluate", str(tmp_path / "missing")], "run directory not found"),
             (["evaluate", str(run_dir), "--split", "train"], "--split must be 'test' or 'val'"),
             (["evaluate", str(empty)], "no tokenizer.json"),
             (["evaluate", str(no_weights)], "no best_model.pt"),
             (["compare", str(tmp_path / "missing")], "run directory not found")]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_evaluate_module_imports_light():
    code = ("import sys, marketgpt.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'matplotlib', 'arch', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_constant_training_returns_give_no_garch_and_say_why():
    assert fit_garch_t(np.zeros(400)) == {"unusable": "constant training returns"}


def test_the_report_names_assets_without_a_garch_baseline_and_why(run, tmp_path):
    run_dir, _ = run
    results = json.loads((run_dir / "test_results.json").read_text())
    assert all(b["garch_t_unusable"] is None for b in results["returns"]["per_asset"].values())
    assert "without a GARCH-t baseline" not in (run_dir / "report.md").read_text()
    asset = next(iter(results["returns"]["per_asset"]))
    results["returns"]["per_asset"][asset]["garch_t_unusable"] = "alpha + beta = 1.0000 >= 1 (not stationary)"
    text = E.write_report(results, tmp_path).read_text()
    assert f"- {asset}: alpha + beta = 1.0000 >= 1 (not stationary)" in text
