"""The world the bad-input cases run in, and how a case is run and judged.

Every case must exit non-zero, print no traceback, name the file, key, option or asset on one line, and leave the
user's files as they were: cases that could lose data get their own copy of a run directory or cache, whose bytes
are compared before and after. The cases of a module run two at a time in one fixture (each is a subprocess); the
tests then check one case each, so a failure names its case.
"""

import hashlib
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from helpers import CONFIGS, run_cli, small_config

HEADER = "date,open,high,low,close,volume\n"


def candle_lines(dates) -> str:
    return "".join(f"{d},10,12,9,11,100\n" for d in dates)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under a folder with the hash of its bytes: equal snapshots mean nothing was touched."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class World:
    """One temporary folder shared by the cases: the sample universe cached, a finished tiny run, source files."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.lock = threading.Lock()
        self.base = json.loads(small_config(root, "tiny", max_steps_per_epoch=2, epochs=2).read_text())

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return path

    def config(self, case: str, top: dict | None = None, **sections) -> Path:
        """The tiny config with some keys changed; raw JSON so that NaN and Infinity pass through as written."""
        raw = json.loads(json.dumps(self.base))
        raw.update(top or {})
        for section, values in sections.items():
            raw[section].update(values)
        return self.write(f"configs/{case}.json", json.dumps(raw))

    def universe(self, case: str, rows: str) -> Path:
        return self.write(f"universes/{case}.csv", "symbol,category,yfinance\n" + rows)

    def run_copy(self, case: str, without: tuple[str, ...] = ()) -> Path:
        """A copy of the finished tiny run for one case (less some files), so no case can spoil another's."""
        copy = self.root / "run_copies" / case
        if not copy.exists():
            shutil.copytree(self.run, copy, ignore=shutil.ignore_patterns(*without) if without else None)
        return copy


@dataclass
class Case:
    id: str
    argv: Callable[[World], list]
    names: tuple[str, ...]                      # each must appear, all on one line of the output
    keep: Callable[[World], Path] | None = None  # a folder whose bytes must be unchanged
    absent: Callable[[World], Path] | None = None  # a path that must not come into existence
    env: dict | None = None


def train_with(case: str, top: dict | None = None, **sections) -> Callable[[World], list]:
    return lambda w: ["train", w.config(case, top, **sections)]


def fit(*extra) -> Callable[[World], list]:
    return lambda w: ["tokenizer", "fit", "--case", "sample", "--data-dir", w.data, "-o", w.path("tok.json"), *extra]


def files(folder: str, *extra, cache: str = "") -> Callable[[World], list]:
    """`data download` of the one-asset universe XYZ from a folder of CSVs prepared in the fixture."""
    return lambda w: ["data", "download", "--universe", w.path("universes/xyz.csv"), "--provider",
                      f"files:{w.path('sources/' + folder)}", "--data-dir", w.path(cache or f"caches/{folder}"), *extra]


def slurm(case: str, *extra) -> Callable[[World], list]:
    return lambda w: ["slurm", CONFIGS / "sample.json", "-o", w.path(f"slurm/{case}/job.sh"), *extra]


def nothing_in(name: str) -> Callable[[World], Path]:
    return lambda w: w.path(name)




def run_cases(cases: list[Case], world: World) -> dict:
    """Run every case, two at a time: (result, snapshot before, snapshot after) per case id."""
    def one(case: Case):
        kept = case.keep(world) if case.keep else None
        before = snapshot(kept) if kept else None
        result = run_cli(*case.argv(world), cwd=world.root, timeout=300, env=case.env)
        return case.id, (result, before, snapshot(kept) if kept else None)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, cases))


def check_case(case: Case, outcome, world: World) -> None:
    """A non-zero exit, no traceback, every name of the case on one line, the kept folder unchanged."""
    result, before, after = outcome
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and "Could not infer format" not in output, output
    assert any(all(name in line for name in case.names) for line in output.splitlines()), output
    assert before == after, "the bytes of the kept folder changed"
    if case.absent:
        assert not case.absent(world).exists(), f"{case.absent(world)} was written"
