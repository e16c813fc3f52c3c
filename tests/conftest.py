import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import SHARED_DATA, fresh_pg


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


PG_SETUP = Path(__file__).resolve().parents[1] / ".ci" / "postgres-setup.sh"


@pytest.fixture(scope="session")
def pg_url():
    """A real PostgreSQL: MARKETGPT_TEST_PG_URL if set (.ci/run sets it from .ci/postgres-setup.sh), else one started
    with that script when PostgreSQL is installed (or as root with CI set). With CI set, a PostgreSQL that cannot be
    started fails the tests that need it instead of skipping them."""
    url = os.environ.get("MARKETGPT_TEST_PG_URL")
    if url:
        yield url
        return
    installed = any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if installed or (os.environ.get("CI") and os.geteuid() == 0):
        folder = Path(tempfile.mkdtemp(prefix="marketgpt-pg-"))   # not under pytest's 0700 folders: the
        folder.chmod(0o755)                                        # server runs as the postgres user
        result = subprocess.run(["bash", str(PG_SETUP), str(folder / "server")], capture_output=True, text=True,
                                timeout=300)
        if result.returncode == 0:
            yield result.stdout.strip().splitlines()[-1]
            pg_ctl = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]
            user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            subprocess.run([*user, str(pg_ctl), "-D", str(folder / "server" / "data"), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
            shutil.rmtree(folder, ignore_errors=True)
            return
        message = f"PostgreSQL could not be started: {result.stderr.strip()[-500:]}"
    else:
        message = "PostgreSQL is not installed: apt-get install postgresql, or set MARKETGPT_TEST_PG_URL"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The same test on SQLite and on an emptied PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log' / 'marketgpt.db'}"
    return fresh_pg(request.getfixturevalue("pg_url"))
