from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "manifest.csv").exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The run of `make demo`: configs/sample.json trained (and evaluated on test at the end of training), once
    for the whole session. Returns (run directory, training output)."""
    from helpers import CONFIGS, run_cli, run_dir_of

    tmp = tmp_path_factory.mktemp("demo")
    result = run_cli("train", CONFIGS / "sample.json", "--set", f"training.checkpoint_dir={tmp / 'checkpoints'}",
                     "--set", f"data.data_dir={tmp / 'data'}")
    assert result.returncode == 0, result.stderr
    return run_dir_of(result.stdout), result.stdout
