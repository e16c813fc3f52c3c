"""Run configuration: JSON with `model`, `training` and `data` sections, validated with clear messages."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MarketGPTError


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    context_length: int = 128
    d_model: int = 256
    num_layers: int = 6
    num_heads: int = 8
    d_ff: int = 1024
    dropout: float = 0.1
    asset_embed_dim: int = 32
    category_embed_dim: int = 16
    use_volume: bool = False


@dataclass
class TrainingConfig:
    batch_size: int = 32
    learning_rate: float = 3e-4
    epochs: int = 50
    early_stopping_patience: int = 10
    gradient_clip: float = 1.0
    weight_decay: float = 0.1
    warmup_ratio: float = 0.02
    min_lr_ratio: float = 0.1
    seed: int = 1337
    checkpoint_every: int = 5
    keep_checkpoints: int = 3
    last_every_steps: int = 0      # also save last.pt every N steps inside an epoch (0: at epoch ends and on stop)
    checkpoint_dir: str = "checkpoints"
    max_steps_per_epoch: int = 0
    gradient_checkpointing: bool = False
    compile: bool = False
    evaluate: bool = True          # evaluate the best model on the test split when training ends
    asset_dropout: float = 0.1     # share of training windows shown as the "unknown asset" (trains zero-shot)
    category_dropout: float = 0.5  # share of those that also hide the category ("unknown category")


@dataclass
class DataConfig:
    universe: str = "sample"
    provider: str = "sample"
    data_dir: str = ""
    start: str = ""
    end: str = ""
    train_ratio: float = 0.70
    val_ratio: float = 0.15
    test_ratio: float = 0.15
    on_bad_rows: str = "fail"


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "training": TrainingConfig, "data": DataConfig}


def _unknown_key(key: str, known: list[str], where: str) -> MarketGPTError:
    near = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(sorted(known))}"
    return MarketGPTError(f"{where}: unknown key '{key}'{hint}")


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a value against the type of the field's default (bool, int, float, str)."""
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    raise MarketGPTError(f"{where}: expected {kind.__name__}, got {value!r}")


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    if not isinstance(raw, dict):
        raise MarketGPTError(f"{source}: the top level must be a JSON object")
    known_top = ["name", "run", *SECTIONS]   # "run": metadata the trainer writes into a run's config.json
    for key in raw:
        if key not in known_top:
            raise _unknown_key(key, known_top, source)
    cfg = Config(name=_coerce(raw.get("name", "run"), "run", f"{source}: name"))
    for section in SECTIONS:
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise MarketGPTError(f"{source}: section '{section}' must be a JSON object")
        for key, value in values.items():
            _assign(cfg, section, key, value, source)
    _check(cfg, source)
    return cfg


def _assign(cfg: Config, section: str, key: str, value: Any, source: str) -> None:
    """Set one known key of a section, checked against the type of its default."""
    target = getattr(cfg, section)
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if key not in names:
        raise _unknown_key(key, names, f"{source}: {section}")
    setattr(target, key, _coerce(value, getattr(target, key), f"{source}: {section}.{key}"))


def _check(cfg: Config, source: str) -> None:
    m, t, d = cfg.model, cfg.training, cfg.data
    positive = {
        "model.vocab_size": m.vocab_size, "model.context_length": m.context_length,
        "model.d_model": m.d_model, "model.num_layers": m.num_layers, "model.num_heads": m.num_heads,
        "model.d_ff": m.d_ff, "model.asset_embed_dim": m.asset_embed_dim,
        "model.category_embed_dim": m.category_embed_dim, "training.batch_size": t.batch_size,
        "training.learning_rate": t.learning_rate, "training.epochs": t.epochs,
        "training.gradient_clip": t.gradient_clip, "training.checkpoint_every": t.checkpoint_every,
        "training.keep_checkpoints": t.keep_checkpoints,
    }
    for key, value in positive.items():
        if value <= 0:
            raise MarketGPTError(f"{source}: {key} must be positive, got {value}")
    if m.d_model % m.num_heads:
        raise MarketGPTError(f"{source}: model.d_model ({m.d_model}) must be divisible by model.num_heads ({m.num_heads})")
    if not 0 <= m.dropout < 1:
        raise MarketGPTError(f"{source}: model.dropout must be in [0, 1), got {m.dropout}")
    ratios = (d.train_ratio, d.val_ratio, d.test_ratio)
    if min(ratios) <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise MarketGPTError(f"{source}: data.train_ratio + val_ratio + test_ratio must be positive and sum to 1, got {ratios}")
    if not 0 <= t.asset_dropout < 1:
        raise MarketGPTError(f"{source}: training.asset_dropout must be in [0, 1), got {t.asset_dropout}")
    if not 0 <= t.category_dropout <= 1:
        raise MarketGPTError(f"{source}: training.category_dropout must be in [0, 1], got {t.category_dropout}")
    if t.last_every_steps < 0:
        raise MarketGPTError(f"{source}: training.last_every_steps must be 0 (off) or positive, got {t.last_every_steps}")
    if d.on_bad_rows not in ("fail", "drop"):
        raise MarketGPTError(f"{source}: data.on_bad_rows must be 'fail' or 'drop', got '{d.on_bad_rows}'")


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse `section.key=value` (value as JSON, else as a plain string)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise MarketGPTError(f"--set {text}: expected section.key=value, e.g. training.batch_size=16")
    path, value = text.split("=", 1)
    section, key = path.split(".", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return section, key, parsed


def read_json(path: str | Path, what: str = "file"):
    """Parse a JSON file, or a one-line MarketGPTError naming the file, the line and the problem."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MarketGPTError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as exc:
        raise MarketGPTError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MarketGPTError(f"{path}: unreadable {what} ({exc.__class__.__name__}: {exc})") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    path = Path(path)
    cfg = from_dict(read_json(path, "config file"), str(path))   # the file alone: its errors name the file
    for text in overrides:                                          # each override's key and type errors name it
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise _unknown_key(section, list(SECTIONS), f"--set {text}")
        _assign(cfg, section, key, value, f"--set {text}")
    if overrides:   # checked together, so that two overrides may change a pair of values that must agree
        _check(cfg, f"{path} with --set {' '.join(overrides)}")
    return cfg
