"""Config files: the cases' exact values, typos named with a suggestion, overrides."""

import json
from pathlib import Path

import pytest

from marketgpt.config import load_config
from marketgpt.errors import MarketGPTError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_case_configs_hold_the_design_values():
    a, b, c = (load_config(CONFIGS / f"case_{k}.json") for k in "abc")
    assert (a.model.vocab_size, a.model.context_length, a.model.d_model, a.model.num_layers, a.model.num_heads,
            a.model.d_ff, a.model.asset_embed_dim, a.model.category_embed_dim) == (4096, 512, 768, 12, 12, 3072, 64, 32)
    assert (a.training.batch_size, a.training.learning_rate, a.training.epochs, a.training.early_stopping_patience,
            a.training.gradient_clip) == (32, 3e-4, 100, 15, 1.0)
    assert (b.model.vocab_size, b.model.context_length, b.model.d_model, b.model.num_layers, b.model.num_heads,
            b.model.d_ff, b.model.asset_embed_dim, b.model.category_embed_dim) == (2048, 256, 512, 8, 8, 2048, 32, 16)
    assert (b.training.learning_rate, b.training.early_stopping_patience) == (5e-4, 10)
    assert (c.model.vocab_size, c.model.context_length, c.model.d_model, c.model.num_layers, c.model.num_heads,
            c.model.d_ff) == (1024, 128, 256, 6, 8, 1024)
    assert (c.training.epochs, c.training.early_stopping_patience, c.training.learning_rate) == (50, 10, 3e-4)
    for cfg in (a, b, c):
        assert (cfg.data.train_ratio, cfg.data.val_ratio, cfg.data.test_ratio) == (0.70, 0.15, 0.15)
        assert cfg.model.dropout == 0.1


def write(tmp_path, raw):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(raw) if not isinstance(raw, str) else raw)
    return path


@pytest.mark.parametrize("raw, message", [
    ({"model": {"d_modle": 64}}, "model: unknown key 'd_modle'; did you mean 'd_model'?"),
    ({"trainig": {}}, "unknown key 'trainig'; did you mean 'training'?"),
    ({"training": {"batch_size": "16"}}, "training.batch_size: expected int, got '16'"),
    ({"training": {"epochs": 0}}, "training.epochs must be positive"),
    ({"training": {"last_every_steps": -1}}, "training.last_every_steps must be 0 (off) or positive"),
    ({"model": {"d_model": 100, "num_heads": 3}}, "must be divisible"),
    ({"data": {"train_ratio": 0.9}}, "sum to 1"),
    ({"data": {"on_bad_rows": "skip"}}, "must be 'fail' or 'drop'"),
    ('{"model": {', "invalid JSON at line 1"),
])
def test_config_errors_name_the_key(tmp_path, raw, message):
    with pytest.raises(MarketGPTError) as err:
        load_config(write(tmp_path, raw))
    assert message in str(err.value) and "cfg.json" in str(err.value)


def test_overrides(tmp_path):
    cfg = load_config(write(tmp_path, {}), ["training.batch_size=16", "model.dropout=0", "data.universe=c"])
    assert (cfg.training.batch_size, cfg.model.dropout, cfg.data.universe) == (16, 0.0, "c")
    with pytest.raises(MarketGPTError, match=r"^--set training.batchsize=16: .*did you mean 'batch_size'"):
        load_config(write(tmp_path, {}), ["training.batchsize=16"])
    with pytest.raises(MarketGPTError, match=r"^--set training.batch_size=abc: training.batch_size: expected int"):
        load_config(write(tmp_path, {}), ["model.dropout=0", "training.batch_size=abc"])
    with pytest.raises(MarketGPTError, match="expected section.key=value"):
        load_config(write(tmp_path, {}), ["batch_size=16"])


def test_missing_file():
    with pytest.raises(MarketGPTError, match="config file not found"):
        load_config("/no/such/config.json")


def test_overrides_that_only_agree_together_are_checked_together(tmp_path):
    cfg = load_config(write(tmp_path, {}), ["data.train_ratio=0.8", "data.val_ratio=0.1", "data.test_ratio=0.1"])
    assert (cfg.data.train_ratio, cfg.data.val_ratio, cfg.data.test_ratio) == (0.8, 0.1, 0.1)
    with pytest.raises(MarketGPTError, match=r"cfg.json with --set data.train_ratio=0.8: .*sum to 1"):
        load_config(write(tmp_path, {}), ["data.train_ratio=0.8"])
