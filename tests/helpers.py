"""Helpers shared by the test modules (pytest puts this folder on sys.path)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_DATA = ROOT.parent / "shared" / "data"   # the real data folder beside the checkout (tests skip without it)


def run_cli(*args, cwd=None, env=None, timeout=600, **kwargs):
    """`marketgpt ARGS` in a subprocess, one thread, output captured."""
    return subprocess.run([sys.executable, "-m", "marketgpt.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          **kwargs)


def run_dir_of(output: str) -> Path:
    return Path(re.search(r"Run directory: (\S+)", output).group(1))


def small_config(tmp_path: Path, name: str = "tiny", model: dict | None = None, **training) -> Path:
    """The sample universe with a small model: a few seconds per run on 2 cores. Without a scale unless `model`
    sets model.scale_lambda (tests/test_scale.py trains scaled runs; the sample config itself is scaled)."""
    raw = json.loads((CONFIGS / "sample.json").read_text())
    raw["name"] = name
    raw["model"].update(vocab_size=32, context_length=32, d_model=32, num_layers=2, num_heads=2, d_ff=64,
                        **{"scale_lambda": 0, **(model or {})})
    raw["training"].update({"batch_size": 8, "epochs": 4, "max_steps_per_epoch": 6, "checkpoint_every": 2,
                            "keep_checkpoints": 1, "checkpoint_dir": str(tmp_path / "checkpoints"), **training})
    raw["data"]["data_dir"] = str(tmp_path / "data")
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return path


def is_png(path: Path) -> bool:
    import matplotlib.image

    img = matplotlib.image.imread(path)
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and img.ndim == 3 and img.shape[2] in (3, 4) \
        and img.shape[0] > 100 and img.shape[1] > 100


def fresh_pg(url):
    """The test database emptied, so each test starts from no tables."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url
