"""Fine-tuning a tiny sample run on one market: files, frozen tokenizer, starting weights, side-by-side table, errors."""

import json
import os

import pandas as pd
import pytest
import torch
from helpers import ROOT, run_cli, small_config

from marketgpt.checkpoint import load_checkpoint
from marketgpt.config import load_config
from marketgpt.errors import MarketGPTError
from marketgpt.finetune import RESULTS_FILE, file_sha256, finetune, finetune_config
from marketgpt.run_files import Start
from marketgpt.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tmp = tmp_path_factory.mktemp("ft")
    parent = train(load_config(small_config(tmp, evaluate=False)), run_dir=tmp / "parent", log=lambda *a: None)
    # a universe with the parent's us_stocks plus one it never saw (a copy of AAPL's candles under another name)
    sample = pd.read_csv(ROOT / "src/marketgpt/universes/sample.csv", dtype=str, keep_default_na=False)
    stocks = sample[sample.category == "us_stocks"]
    new = stocks.iloc[:1].assign(symbol="NEWCO")
    universe = tmp / "stocks.csv"
    pd.concat([stocks, new]).to_csv(universe, index=False)
    src = tmp / "files"
    src.mkdir()
    from marketgpt.data import load_candles, load_universe
    for sym in list(stocks.symbol) + ["NEWCO"]:
        base = stocks.symbol.iloc[0] if sym == "NEWCO" else sym
        frame = load_candles(load_universe(universe)[lambda f: f.symbol == base].head(1), "sample", str(tmp / "data"))
        frame[["date", "open", "high", "low", "close", "volume"]].to_csv(src / f"{sym}.csv", index=False)
    run = finetune(parent, "us_stocks", universe=universe, provider=f"files:{src}", data_dir=str(tmp / "data2"),
                   overrides=["training.epochs=2", "training.max_steps_per_epoch=3"], run_dir=tmp / "ft",
                   log=lambda *a: None)
    return parent, run, tmp, universe, src


def test_files_parent_and_tokenizer(runs):
    parent, run, *_ = runs
    assert (run / "tokenizer.json").read_bytes() == (parent / "tokenizer.json").read_bytes()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["run"]["parent"]["best_model_sha256"] == file_sha256(parent / "best_model.pt")
    assert cfg["run"]["parent"]["run_dir"] == str(parent.resolve())
    assert cfg["model"] == json.loads((parent / "config.json").read_text())["model"]
    assert cfg["training"]["learning_rate"] < json.loads((parent / "config.json").read_text())["training"]["learning_rate"]
    assert pd.read_csv(run / "universe.csv").category.eq("us_stocks").all()


def test_initial_weights(runs):
    parent, run, tmp, universe, src = runs
    from marketgpt.finetune import initial_state
    state = load_checkpoint(parent / "best_model.pt")["model"]
    pinfo = json.loads((parent / "asset_info.json").read_text())
    info = json.loads((run / "asset_info.json").read_text())
    symbols = [a["symbol"] for a in info["assets"]]
    init = initial_state(state, pinfo, symbols, info["categories"])
    pids = {a["symbol"]: a["id"] for a in pinfo["assets"]}
    unknown = state["asset_emb.weight"][pinfo["unknown"]["asset_id"]]
    for i, s in enumerate(symbols):
        want = state["asset_emb.weight"][pids[s]] if s in pids else unknown
        assert torch.equal(init["asset_emb.weight"][i], want)
    assert "NEWCO" in symbols and "NEWCO" not in pids
    cat = pinfo["categories"].index("us_stocks")
    assert torch.equal(init["category_emb.weight"][0], state["category_emb.weight"][cat])
    for k, v in state.items():
        if "emb" not in k.split(".")[0] or k.startswith(("tok", "pos")):
            assert torch.equal(init[k], v), k
    # the weights a fine-tune starts from are those: train with the same Start and stop before any step
    seen = {}
    start = Start(init=lambda model, store: (model.load_state_dict(init),
                                             seen.update(state={k: v.clone() for k, v in model.state_dict().items()})))
    cfg = load_config(run / "config.json", ["training.epochs=1", "training.max_steps_per_epoch=1", "training.evaluate=false"])
    train(cfg, run_dir=tmp / "again", log=lambda *a: None, start=start)
    assert all(torch.equal(seen["state"][k], init[k]) for k in init)


def test_side_by_side(runs):
    _, run, *_ = runs
    result = json.loads((run / RESULTS_FILE).read_text())
    assert set(result["models"]) == {"parent (zero-shot)", "fine-tuned"}
    n = {r["n"] for r in result["models"].values()}
    assert len(n) == 1 and n.pop() == result["test_rows"] > 0 and result["same_rows"]
    assert result["verdict"].startswith(("fine-tuning helped", "fine-tuning did not help"))


def test_bad_input(runs, tmp_path):
    parent, run, tmp, universe, src = runs
    with pytest.raises(MarketGPTError, match="run directory not found"):
        finetune(tmp_path / "nope", "us_stocks")
    with pytest.raises(MarketGPTError, match="no assets of that category.*its categories: us_stocks"):
        finetune_config(parent, "crypto", universe=universe)
    with pytest.raises(MarketGPTError, match="unknown category.*known: us_stocks"):
        finetune_config(parent, "stonks")
    r = run_cli("finetune", tmp_path / "nope", "--category", "crypto")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not found" in r.stderr
