"""Parquet cache: one file per asset under `<data_dir>/<source>/`, with its provenance in the file's metadata."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import MarketGPTError
from .providers import DEFAULT_EXCHANGE, describe_error
from .validate import COLUMNS

META_KEY = b"marketgpt"


def default_data_dir(data_dir: str | Path | None = None) -> Path:
    """`data_dir` if given, else $MARKETGPT_DATA, else ./data."""
    return Path(data_dir or os.environ.get("MARKETGPT_DATA") or "data")


@dataclass
class Provenance:
    provider: str
    provider_symbol: str
    requested_start: str
    requested_end: str
    fetched_at: str
    source: str = ""
    dropped: dict[str, int] = field(default_factory=dict)
    source_stamp: dict = field(default_factory=dict)   # the source file's name, size, time and hash (files)


def cache_folder(provider: str) -> str:
    """One cache folder per source, so that two CSV folders or two exchanges never mix their candles in one file:
    `sample`, `yfinance`, `ccxt-<exchange>`, `files-<folder name>-<hash of its absolute path>`."""
    kind, _, arg = provider.partition(":")
    if kind == "ccxt":
        return f"ccxt-{arg or DEFAULT_EXCHANGE}"
    if kind == "files" and arg:
        folder = Path(arg).expanduser().resolve()
        return f"files-{folder.name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}"
    return kind


class CandleCache:
    def __init__(self, data_dir: str | Path | None, provider: str):
        self.root = default_data_dir(data_dir) / cache_folder(provider)

    def path(self, symbol: str) -> Path:
        return self.root / f"{symbol}.parquet"

    def exists(self, symbol: str) -> bool:
        return self.path(symbol).exists()

    def write(self, symbol: str, candles: pd.DataFrame, provenance: Provenance) -> Path:
        """Write atomically (temp file + rename) so an interrupted download never leaves a half file."""
        path = self.path(symbol)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(candles.reset_index(drop=True), preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps(provenance.__dict__, sort_keys=True).encode()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        pq.write_table(table.replace_schema_metadata(meta), tmp)
        os.replace(tmp, path)
        return path

    def provenance(self, symbol: str) -> Provenance | None:
        path = self.path(symbol)
        if not path.exists():
            return None
        try:
            meta = pq.read_schema(path).metadata or {}
        except (OSError, pa.ArrowException) as exc:
            raise unreadable(path, exc) from None
        if META_KEY not in meta:
            raise unreadable(path, "no marketgpt provenance in its metadata")
        try:
            return Provenance(**json.loads(meta[META_KEY]))
        except (ValueError, TypeError) as exc:
            raise unreadable(path, exc) from None

    def read(self, symbol: str) -> pd.DataFrame:
        path = self.path(symbol)
        try:
            frame = pd.read_parquet(path)
        except FileNotFoundError:
            raise MarketGPTError(f"asset {symbol}: not cached at {path}") from None
        except (OSError, pa.ArrowException) as exc:
            raise unreadable(path, exc) from None
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise unreadable(path, f"no column(s) {', '.join(missing)}")
        return frame


def unreadable(path: Path, problem: Exception | str) -> MarketGPTError:
    """A cache file that cannot be used is only a stale copy: deleting it and downloading again repairs it."""
    reason = describe_error(problem) if isinstance(problem, Exception) else problem
    return MarketGPTError(f"{path}: unreadable cache file ({reason}); delete it and download again")
