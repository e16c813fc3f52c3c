"""Run configuration: JSON with `model`, `training` and `data` sections, validated with clear messages."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
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
    scale_lambda: float = 0.0       # 0: no scale; in (0, 1): the EWMA decay of the volatility scale (tokenizer_scale.py)
    calendar: bool = False          # an embedding of each candle's weekday (model.py); runs trained before have none


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
    calibrate: bool = True         # fit the close head's temperature on val first (calibration.py)
    # share of training windows shown as the "unknown asset" (trains zero-shot). 0.3 measured best of 0 / 0.1 / 0.3 on
    # ../shared/data minus 20 held-out series (4 epochs, 3 x 128, ctx 64): val loss of the known assets 4.7504 / 4.7497 /
    # 4.7503 (no cost), held-out token loss -- / 4.7306 / 4.7203 and close NLL skill vs GARCH-t -- / +0.0054 / +0.0073.
    asset_dropout: float = 0.3
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
    # explicit cutoffs instead of the ratios (a walk-forward fold sets them): train <= train_end < val <= val_end
    train_end: str = ""
    val_end: str = ""
    embargo_days: int = 0    # targets in the first N calendar days after train_end belong to no split
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
DATE_FORMAT = "%Y-%m-%d"
# A value that becomes one component of a path (a run name, a symbol, a file name): no separator, no "..", no
# leading dash or dot, nothing a shell or an #SBATCH line would read differently.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_^=][A-Za-z0-9._=^-]*$")


@dataclass(frozen=True)
class Range:
    """The valid values of one number: finite, from `lo` (exclusive when lo_open) up to `hi` (exclusive when
    hi_open). The config and the command-line options check every bound through it, so each message has one form."""

    lo: float = 0
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    text: str = ""   # how the message says it, when plainer than the interval ("positive", "0 (off) or positive")

    def __contains__(self, value) -> bool:
        try:
            finite = math.isfinite(value)
        except (OverflowError, TypeError):   # an integer too large for a float; not a number
            return False
        if not finite or (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def __str__(self) -> str:
        if self.text:
            return self.text
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


POSITIVE = Range(0, lo_open=True, text="positive")
FRACTION = Range(0, 1, hi_open=True)          # a share that cannot be everything: [0, 1)
SHARE = Range(0, 1, lo_open=True, hi_open=True)
# Every numeric field of the config, by section.key. A test checks that no numeric field is left out.
RANGES = {
    **{f"model.{k}": POSITIVE for k in ("context_length", "d_model", "num_layers", "num_heads", "d_ff",
                                         "asset_embed_dim", "category_embed_dim")},
    "model.vocab_size": Range(2, 65536, text="in [2, 65536] (tokens are stored as uint16)"),
    "model.dropout": FRACTION,
    "model.scale_lambda": Range(0, 1, hi_open=True, text="0 (no scale) or in (0, 1)"),
    **{f"training.{k}": POSITIVE for k in ("batch_size", "learning_rate", "epochs", "early_stopping_patience",
                                            "gradient_clip", "checkpoint_every", "keep_checkpoints")},
    "training.weight_decay": Range(0),
    "training.warmup_ratio": FRACTION,
    "training.min_lr_ratio": Range(0, 1),
    "training.seed": Range(0, 2**32 - 1, text="an integer in [0, 4294967295]"),
    "training.last_every_steps": Range(0, text="0 (off) or positive"),
    "training.max_steps_per_epoch": Range(0, text="0 (the whole epoch) or positive"),
    "training.asset_dropout": FRACTION,
    "training.category_dropout": Range(0, 1),
    **{f"data.{k}": SHARE for k in ("train_ratio", "val_ratio", "test_ratio")},
    "data.embargo_days": Range(0, text="0 (none) or a positive number of days"),
}


def check_number(value, rng: Range, where: str):
    """`value` if it lies in `rng`, else a one-line error naming `where` it came from."""
    if value not in rng:
        shown = value if isinstance(value, (int, float)) else f"{type(value).__name__} {value!r}"
        raise MarketGPTError(f"{where} must be {rng}, got {shown}")
    return value


def bounded(kind: type, rng: Range):
    """An argparse `type=`: a number of `kind` inside `rng`, else argparse's one-line usage error naming the option."""
    import argparse

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got '{text}'")
        if value not in rng:
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return value

    return parse


def check_date(value: str, where: str) -> str:
    """A YYYY-MM-DD date, zero-padded (the cache compares dates as strings), or "" for none."""
    if not value:
        return ""
    try:
        return datetime.strptime(value, DATE_FORMAT).strftime(DATE_FORMAT)
    except ValueError:
        raise MarketGPTError(f"{where} '{value}' is not a date; expected YYYY-MM-DD") from None


def check_text(value: str, where: str, pattern: re.Pattern | None = None, expected: str = "") -> str:
    """Every value that becomes a path or a line of a script passes here: no control character (a newline would
    start a new #SBATCH or shell line), and when given, the whole value matches `pattern`."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value) or (pattern is not None and not pattern.fullmatch(value)):
        raise MarketGPTError(f"{where} {value!r}: not allowed" + (f"; expected {expected}" if expected else
                                                                  " (control characters)"))
    return value


def check_name(value: str, where: str) -> str:
    """A value used as one file or folder name: it can never reach outside the folder it is put in."""
    return check_text(value, where, NAME_PATTERN, "letters, digits and . _ - ^ = (no path separators, not "
                                                  "starting with . or -)")


def writable_dir(path: str | Path, what: str) -> Path:
    """Create a folder (with its parents) and prove that it takes files, before any work that would be lost."""
    path = Path(path)
    above = next((p for p in (path, *path.parents) if p.exists()), None)
    if above is not None and not above.is_dir():
        where = "it" if above == path else str(above)
        raise MarketGPTError(f"{path}: cannot write the {what} there ({where} is a file, not a folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise MarketGPTError(f"{path}: cannot write the {what} there ({exc.strerror or exc})") from None
    return path


def writable_file(path: str | Path, what: str) -> Path:
    """A file that can be written: not a folder, in a folder that takes files."""
    path = Path(path)
    if path.is_dir():
        raise MarketGPTError(f"{path}: is a folder; give a file name for the {what}")
    writable_dir(path.parent, f"folder of the {what}")
    return path


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
    check_name(cfg.name, f"{source}: name")
    for key, rng in RANGES.items():
        section, name = key.split(".")
        check_number(getattr(getattr(cfg, section), name), rng, f"{source}: {key}")
    if m.d_model % m.num_heads:
        raise MarketGPTError(f"{source}: model.d_model ({m.d_model}) must be divisible by model.num_heads ({m.num_heads})")
    ratios = (d.train_ratio, d.val_ratio, d.test_ratio)
    if abs(sum(ratios) - 1) > 1e-6:
        raise MarketGPTError(f"{source}: data.train_ratio + val_ratio + test_ratio must be positive and sum to 1, got {ratios}")
    for key, value in (("data.universe", d.universe), ("data.provider", d.provider),
                       ("training.checkpoint_dir", t.checkpoint_dir)):
        if not value.strip():
            raise MarketGPTError(f"{source}: {key} must not be empty")
        check_text(value, f"{source}: {key}")
    check_text(d.data_dir, f"{source}: data.data_dir")
    d.start, d.end = check_date(d.start, f"{source}: data.start"), check_date(d.end, f"{source}: data.end")
    if d.start and d.end and d.start > d.end:
        raise MarketGPTError(f"{source}: data.start {d.start} is after data.end {d.end}")
    d.train_end, d.val_end = (check_date(d.train_end, f"{source}: data.train_end"),
                              check_date(d.val_end, f"{source}: data.val_end"))
    if bool(d.train_end) != bool(d.val_end):
        raise MarketGPTError(f"{source}: data.train_end and data.val_end go together (give both or neither)")
    if d.train_end and d.train_end >= d.val_end:
        raise MarketGPTError(f"{source}: data.train_end {d.train_end} must be before data.val_end {d.val_end}")
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
