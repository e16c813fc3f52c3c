"""Progress bars on a terminal, plain log lines otherwise (batch jobs, CI, pipes)."""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def is_terminal() -> bool:
    return sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None, every: int = 0) -> Iterator[T]:
    """Yield `items`, drawing a tqdm bar on a terminal or printing `desc i/total` lines otherwise."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if is_terminal():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
        return
    step = every or max(1, (total or 10) // 10)
    for i, item in enumerate(items, 1):
        yield item
        if i % step == 0 or i == total:
            print(f"{desc}: {i}/{total if total is not None else '?'}", file=sys.stderr, flush=True)
