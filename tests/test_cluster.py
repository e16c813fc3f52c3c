"""Cluster operations: SLURM job scripts, launch, status, error lines; multi-node torchrun; and, on a real
single-node SLURM (.ci/slurm-setup.sh), a CPU job to completion, a job signalled before its limit that checkpoints,
requeues and ends with the same weights as an uninterrupted run, and `launch --yes` of two cases seen by `status`.

The SLURM tests skip when there is no SLURM here. As root they run .ci/slurm-setup.sh first when `CI` is set or
slurm is already installed (it is quick when the cluster is up); with `CI` set (.ci/run sets it) a failed setup
fails them. Without root, set MARKETGPT_TEST_SLURM=1 to use the SLURM that `sinfo` reaches (jobs go to its
default partition and must be able to read this machine's /tmp).
"""

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest
import torch

from marketgpt.checkpoint import load_checkpoint
from marketgpt.cluster import SlurmOptions, job_script, write_job_script
from marketgpt.cluster_launch import launch
from marketgpt.cluster_status import format_status, run_status
from marketgpt.errors import MarketGPTError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SETUP = ROOT / ".ci" / "slurm-setup.sh"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED", ""}


def tiny_config(folder: Path, name="tiny", data_dir=None, **training) -> Path:
    """The sample universe with a small model (see tests/test_train.py)."""
    raw = json.loads((CONFIGS / "sample.json").read_text())
    raw["name"] = name
    raw["model"].update(vocab_size=32, context_length=32, d_model=32, num_layers=2, num_heads=2, d_ff=64)
    raw["training"].update({"batch_size": 8, "epochs": 4, "max_steps_per_epoch": 6, "checkpoint_every": 2,
                            "keep_checkpoints": 1, "checkpoint_dir": str(folder / "checkpoints"),
                            "evaluate": False, **training})          # the test-split report is not tested here
    raw["data"]["data_dir"] = str(data_dir or folder / "data")
    path = folder / f"{name}.json"
    path.write_text(json.dumps(raw))
    return path


def run_cli(*args, stdin=subprocess.DEVNULL, timeout=120, **kwargs):
    return helpers.run_cli(*args, stdin=stdin, timeout=timeout, **kwargs)


def assert_one_error_line(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("marketgpt: error: "), err
    for needle in needles:
        assert needle in err, err


def weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def sbatch_lines(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def bash_syntax_ok(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """The sample universe cached once for every job of the session."""
    folder = tmp_path_factory.mktemp("data")
    result = run_cli("data", "download", "--case", "sample", "--data-dir", folder)
    assert result.returncode == 0, result.stderr
    return folder


# --- job scripts ---------------------------------------------------------------------------------------------------

def test_default_script_has_the_guides_resources_and_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = job_script(CONFIGS / "sample.json")
    lines = sbatch_lines(script)
    for expected in ("--job-name=sample", "--partition=long", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=64",
                     "--gres=gpu:a100:2", "--mem=128G", "--time=7-00:00:00", "--output=logs/sample_%j.out",
                     "--error=logs/sample_%j.err", "--requeue", "--open-mode=append", "--signal=B:USR1@300"):
        assert expected in lines, (expected, lines)
    assert not any(line.startswith("--account") for line in lines)
    assert 'CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0,1}"' in script
    assert "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:512" in script
    assert "NPROC_PER_NODE=2" in script and "--rdzv-backend=c10d" in script and "srun " in script
    assert "torch.distributed.run" in script and "--run-dir \"$RUN_DIR\"" in script
    assert "scontrol requeue \"$SLURM_JOB_ID\"" in script and "trap on_usr1 USR1" in script
    assert f"CONFIG={CONFIGS / 'sample.json'}" in script
    path = write_job_script(CONFIGS / "sample.json")
    assert path == Path("logs/sample.sh") and (tmp_path / "logs").is_dir()
    assert sbatch_lines(path.read_text()) == lines
    bash_syntax_ok(path)


def test_two_nodes_other_gpus_account_and_cpu_jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    multi = job_script(CONFIGS / "sample.json", SlurmOptions(nodes=2, gpus_per_node=4, gpu_type="h100",
                                                              account="proj42", time="2-00:00:00", mem_per_gpu="80G",
                                                              cpus_per_gpu=16))
    lines = sbatch_lines(multi)
    for expected in ("--nodes=2", "--ntasks-per-node=1", "--gres=gpu:h100:4", "--cpus-per-task=64", "--mem=320G",
                     "--account=proj42", "--time=2-00:00:00"):
        assert expected in lines, (expected, lines)
    assert "NPROC_PER_NODE=4" in multi and 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in multi
    assert '--nnodes="${SLURM_JOB_NUM_NODES:-1}"' in multi
    cpu = job_script(CONFIGS / "sample.json", SlurmOptions(gpus_per_node=0, cpus_per_task=4, mem="8G",
                                                            overrides=["training.epochs=3"]))
    lines = sbatch_lines(cpu)
    assert "--cpus-per-task=4" in lines and "--mem=8G" in lines
    assert not any(line.startswith("--gres") for line in lines)
    assert "CUDA_VISIBLE_DEVICES" not in cpu and "NPROC_PER_NODE=1" in cpu
    assert "TRAIN_ARGS=(--set training.epochs=3)" in cpu
    any_gpu = job_script(CONFIGS / "sample.json", SlurmOptions(gpu_type=""))
    assert "--gres=gpu:2" in sbatch_lines(any_gpu)
    for text in (multi, cpu, any_gpu):
        path = tmp_path / "job.sh"
        path.write_text(text)
        bash_syntax_ok(path)


def test_slurm_command_writes_the_script_and_the_log_folder(tmp_path):
    result = run_cli("slurm", CONFIGS / "sample.json", "--gpus-per-node", "0", "--partition", "debug", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    script = tmp_path / "logs" / "sample.sh"
    assert script.exists() and os.access(script, os.X_OK)
    assert "sbatch logs/sample.sh" in result.stdout
    out = run_cli("slurm", CONFIGS / "sample.json", "-o", "job.sh", "--nodes", "2", "--account", "acc", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "--nodes=2" in sbatch_lines((tmp_path / "job.sh").read_text())
    printed = run_cli("slurm", CONFIGS / "sample.json", "-o", "-", cwd=tmp_path)
    assert printed.stdout.startswith("#!/bin/bash") and "#SBATCH --gres=gpu:a100:2" in printed.stdout


@pytest.mark.parametrize("args, needle", [
    (["--time", "forever"], "--time forever"),
    (["--nodes", "0"], "--nodes"),
    (["--mem", "lots"], "--mem lots"),
    (["--time", "4:00"], "not longer than --signal-seconds 300"),
    (["--set", "training.epochs=-1"], "training.epochs must be positive"),
])
def test_bad_options_are_one_line(tmp_path, args, needle):
    assert_one_error_line(run_cli("slurm", CONFIGS / "sample.json", *args, cwd=tmp_path), needle)


# --- launch and its errors, with stand-in SLURM tools ------------------------------------------------------------

def fake_tools(folder: Path, partitions=("debug*", "long")) -> Path:
    """sinfo / sbatch / squeue stand-ins that record their calls in calls.log."""
    bin_dir = folder / "fakebin"
    bin_dir.mkdir()
    log = folder / "calls.log"
    scripts = {
        "sinfo": f"""#!/bin/sh
echo "sinfo $*" >> {log}
case "$*" in *-h*) printf '%s\\n' {' '.join(partitions)} ;; *) echo "PARTITION AVAIL NODES STATE"; echo "debug* up 1 idle" ;; esac
""",
        "sbatch": f"""#!/bin/sh
echo "sbatch $*" >> {log}
if [ "$1" = --test-only ]; then echo "sbatch: Job 99 to start at 2030-01-01T00:00:00 using 1 processors" >&2; exit 0; fi
n=$(/bin/cat {folder}/next 2>/dev/null || echo 100); echo $((n + 1)) > {folder}/next; echo "$n"
""",
        "squeue": f"""#!/bin/sh
echo "squeue $*" >> {log}
echo RUNNING
""",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_missing_sbatch_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_error_line(run_cli("launch", tiny_config(tmp_path), "--yes", cwd=tmp_path, env={"PATH": str(empty)}),
                          "sbatch not found")


def test_unknown_partition_is_one_line(tmp_path):
    bin_dir = fake_tools(tmp_path)
    result = run_cli("launch", tiny_config(tmp_path), "--partition", "gpu-huge", "--yes", cwd=tmp_path,
                     env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert_one_error_line(result, "partition 'gpu-huge' does not exist", "debug (default), long")
    assert "sbatch --parsable" not in (tmp_path / "calls.log").read_text()


def test_config_without_cached_data_is_one_line(tmp_path):
    raw = json.loads((CONFIGS / "sample.json").read_text())
    raw["data"].update(provider="yfinance", data_dir=str(tmp_path / "nothing"))
    path = tmp_path / "net.json"
    path.write_text(json.dumps(raw))
    assert_one_error_line(run_cli("launch", path, "--yes", cwd=tmp_path), "no cached data for 6 of 6 assets",
                          "marketgpt data download")


def test_launch_asks_and_without_stdin_submits_nothing(tmp_path):
    bin_dir = fake_tools(tmp_path)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    configs = [tiny_config(tmp_path, "alpha"), tiny_config(tmp_path, "beta")]
    result = run_cli("launch", *configs, "--gpus-per-node", "0", "--partition", "debug", cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr
    assert "[y/N]" in result.stdout and "nothing submitted" in result.stdout
    assert "PARTITION" in result.stdout                           # the cluster state was shown
    calls = (tmp_path / "calls.log").read_text()
    assert calls.count("sbatch --test-only") == 2 and "sbatch --parsable" not in calls


def test_launch_yes_submits_every_case_and_writes_the_monitor(tmp_path, monkeypatch):
    bin_dir = fake_tools(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    configs = [tiny_config(tmp_path, "alpha"), tiny_config(tmp_path, "beta")]
    said = []
    jobs = launch(configs, SlurmOptions(gpus_per_node=0, partition="debug"), yes=True, log=said.append)
    assert [(j.case, j.job_id) for j in jobs] == [("alpha", "100"), ("beta", "101")]
    text = "\n".join(said)
    assert "submitted alpha: job 100; log logs/alpha_100.out" in text and "tail -f logs/beta_101.out" in text
    assert "squeue -j 100,101" in text and "scancel 100 101" in text
    monitor = (tmp_path / "logs" / "monitor.sh").read_text()
    assert "squeue -j 100,101" in monitor and "tail -n 20 -F logs/alpha_100.out" in monitor
    bash_syntax_ok(tmp_path / "logs" / "monitor.sh")
    for case in ("alpha", "beta"):
        bash_syntax_ok(tmp_path / "logs" / f"{case}.sh")
    with pytest.raises(MarketGPTError, match="also used by"):
        launch([configs[0], configs[0]], SlurmOptions(partition="debug"), yes=True, log=said.append)
    asked = []
    assert launch(configs, SlurmOptions(gpus_per_node=0, partition="debug"), log=said.append,
                  input_fn=lambda q: asked.append(q) or "y")
    assert asked and "submit 2 job(s)" in asked[0]


# --- status ----------------------------------------------------------------------------------------------------------

def fake_run(folder: Path, name="case_x", job="4242", epochs=2, total=10, finished=False) -> Path:
    run = folder / "checkpoints" / f"{name}_20250101_000000"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"name": name, "training": {"epochs": total}, "run": {}}))
    rows = [{"epoch": e, "train_loss": 3.0 - 0.1 * e, "val_loss": 3.2 - 0.1 * e, "train_accuracy": 0.4,
             "val_accuracy": 0.38, "time": 60.0 * e} for e in range(1, epochs + 1)]
    if epochs:                                                      # the trainer writes it after an epoch
        (run / "training_log.json").write_text(json.dumps({
            "epochs": rows, "best_val_loss": rows[-1]["val_loss"], "best_epoch": epochs, "total_epochs": total,
            "elapsed_seconds": 60.0 * epochs, "slurm_job_id": job, "world_size": 2, "finished": finished}))
    (run / "last.pt").write_bytes(b"x")
    return run


def test_status_without_slurm_tools_says_unknown(tmp_path, monkeypatch):
    run = fake_run(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    s = run_status(run)
    assert (s["case"], s["epoch"], s["total_epochs"], s["best_epoch"]) == ("case_x", 2, 10, 2)
    assert s["slurm_job_id"] == "4242" and s["slurm_state"] == "unknown"
    assert s["eta_seconds"] == pytest.approx(480.0) and s["checkpoint"] == "last.pt"
    text = format_status([s])
    assert "case case_x" in text and "job 4242 unknown" in text and "epoch 2/10" in text
    assert "val 3.000 (38.0%)" in text and "ETA 8m 0s" in text and "last.pt" in text
    result = run_cli("status", "--all", "--root", tmp_path / "checkpoints", env={"PATH": str(empty)})
    assert result.returncode == 0, result.stderr
    assert "job 4242 unknown" in result.stdout
    as_json = run_cli("status", run, "--json", env={"PATH": str(empty)})
    assert json.loads(as_json.stdout)[0]["slurm_state"] == "unknown"


def test_status_watch_refreshes_until_interrupted(tmp_path, monkeypatch):
    import io

    from marketgpt import cluster_status

    fake_run(tmp_path, finished=True, epochs=10)
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cluster_status.time, "sleep", sleep)
    monkeypatch.setenv("PATH", str(tmp_path))
    out = io.StringIO()
    assert cluster_status.status_command([], root=str(tmp_path / "checkpoints"), watch=True, interval=5, out=out) == 0
    text = out.getvalue()
    assert sleeps == [5, 5] and text.count("case case_x") == 2 and "finished  2 processes" in text
    assert "ETA done" in text


def test_status_reads_the_job_state_and_the_job_record(tmp_path):
    bin_dir = fake_tools(tmp_path)
    run = fake_run(tmp_path, job=None, epochs=0)
    records = run.parent / ".slurm_jobs"
    records.mkdir()
    (records / "777").write_text(f"checkpoints/{run.name}\n")      # written by the job script at its first start
    result = run_cli("status", "--root", tmp_path / "checkpoints", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "job 777 RUNNING" in result.stdout and "starting" in result.stdout and "epoch 0/10" in result.stdout
    assert "squeue -h -t all -j 777" in (tmp_path / "calls.log").read_text()


def test_status_errors_are_one_line(tmp_path):
    assert_one_error_line(run_cli("status", "--all", "--root", tmp_path / "nope"), "no such checkpoint folder")
    assert_one_error_line(run_cli("status", tmp_path), "not a run directory")


# --- multi-node path: two torchrun agents, c10d rendezvous ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_agents_train_as_two_nodes(tmp_path, sample_data):
    cfg = tiny_config(tmp_path, "twonodes", sample_data, epochs=2, max_steps_per_epoch=3)
    run = tmp_path / "checkpoints" / "twonodes_run"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [tmp_path / f"agent{i}.log" for i in range(2)]

    def agent(i: int) -> subprocess.Popen:
        # as on two machines: the agent on the endpoint's host serves the rendezvous store, the other joins it
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=marketgpt-test",
               f"--rdzv-conf=is_host={int(i == 0)}", "-m", "marketgpt.cli", "train", str(cfg), "--run-dir", str(run)]
        with open(logs[i], "w") as out:                      # files, not pipes: a full pipe would stall an agent
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    agents = [agent(0), agent(1)]
    deadline = time.time() + 240
    try:
        while time.time() < deadline and any(a.poll() is None for a in agents):
            time.sleep(0.2)
    finally:
        for a in agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)             # the agent and its worker
                a.wait()
    outputs = [log.read_text() for log in logs]
    assert [a.returncode for a in agents] == [0, 0], outputs
    assert any("x 2 processes" in out and "effective batch: 16" in out for out in outputs), outputs
    log = json.loads((run / "training_log.json").read_text())
    assert log["finished"] and log["world_size"] == 2 and [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert json.loads((run / "config.json").read_text())["run"]["world_size"] == 2


# --- a real SLURM ---------------------------------------------------------------------------------------------------

def _sinfo_ok() -> bool:
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and bool(result.stdout.strip())


@pytest.fixture(scope="session")
def slurm() -> str:
    """A working SLURM; returns the partition the test jobs use."""
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    installed = shutil.which("slurmctld") is not None
    if is_root and (os.environ.get("CI") or installed):
        result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
        if result.returncode:
            message = f".ci/slurm-setup.sh failed: {(result.stderr or result.stdout).strip()[-2000:]}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        return "debug"
    if os.environ.get("MARKETGPT_TEST_SLURM") and _sinfo_ok():
        return next(p.rstrip("*") for p in subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True,
                                                          text=True).stdout.split() if p.endswith("*"))
    pytest.skip("SLURM is not available: run .ci/slurm-setup.sh as root (Debian 12) for a single-node cluster, "
                "or set MARKETGPT_TEST_SLURM=1 to use the one sinfo reaches")


def job_state(job: str) -> str:
    result = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return result.stdout.strip()


def wait_for_job(job: str, log: Path, timeout: float = 180) -> str:
    end = time.time() + timeout
    while time.time() < end:
        state = job_state(job)
        if state in FINAL_STATES:
            return state
        time.sleep(1)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job} still {job_state(job)} after {timeout:.0f} s; log:\n"
                f"{log.read_text() if log.exists() else '(no log)'}")


def wait_for_line(log: Path, pattern: str, job: str, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if log.exists() and re.search(pattern, log.read_text(), re.MULTILINE):
            return
        if job_state(job) in FINAL_STATES:
            break
        time.sleep(0.2)
    pytest.fail(f"no '{pattern}' in {log}:\n{log.read_text() if log.exists() else '(no log)'}")


CPU_JOB = ["--gpus-per-node", "0", "--cpus-per-task", "1", "--mem", "1G", "--time", "15:00"]


def test_sbatch_trains_the_sample_config_on_cpu(slurm, tmp_path, sample_data):
    ckpt = tmp_path / "checkpoints"
    made = run_cli("slurm", CONFIGS / "sample.json", *CPU_JOB, "--partition", slurm,
                   "--set", "training.epochs=2", "--set", "training.max_steps_per_epoch=3",
                   "--set", "training.evaluate=false",
                   "--set", f"training.checkpoint_dir={ckpt}", "--set", f"data.data_dir={sample_data}", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    submitted = subprocess.run(["sbatch", "--parsable", "logs/sample.sh"], capture_output=True, text=True,
                               cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    out = tmp_path / "logs" / f"sample_{job}.out"
    assert wait_for_job(job, out) in ("COMPLETED", ""), out.read_text()
    text = out.read_text()
    assert "Using CPU: 1 threads" in text and "Epoch 2/2" in text and "training finished" in text, text
    run = Path(re.search(r"Run directory: (\S+)", text).group(1))
    log = json.loads((run / "training_log.json").read_text())
    assert log["finished"] and log["slurm_job_id"] == job and log["world_size"] == 1
    assert (ckpt / ".slurm_jobs" / job).read_text().strip() == str(run)
    status = run_status(run)
    assert status["slurm_job_id"] == job and status["slurm_state"] in ("COMPLETED", "not in queue")


@pytest.fixture(scope="module")
def two_cases(slurm, tmp_path_factory, sample_data):
    """`marketgpt launch --yes` of two identical cases but for their names: `ref` runs through, `sig` is
    signalled before its limit by the test below."""
    folder = tmp_path_factory.mktemp("launch")
    configs = [tiny_config(folder, name, sample_data, epochs=16, max_steps_per_epoch=30, early_stopping_patience=50,
                           checkpoint_every=100) for name in ("ref", "sig")]
    result = run_cli("launch", *configs, *CPU_JOB, "--partition", slurm, "--yes", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = dict(re.findall(r"submitted (\w+): job (\d+)", result.stdout))
    assert set(jobs) == {"ref", "sig"}, result.stdout
    yield folder, jobs, result.stdout
    for job in jobs.values():
        if job_state(job) not in FINAL_STATES:
            subprocess.run(["scancel", job])


def test_launch_yes_submits_two_cases_and_status_shows_both(two_cases):
    folder, jobs, out = two_cases
    assert "cluster state (sinfo):" in out and "would start at" in out
    assert (folder / "logs" / "monitor.sh").exists() and f"squeue -j {jobs['ref']},{jobs['sig']}" in out
    for case, job in jobs.items():
        wait_for_line(folder / "logs" / f"{case}_{job}.out", r"^Run directory: ", job)
    status = run_cli("status", "--all", "--root", folder / "checkpoints", cwd=folder)
    assert status.returncode == 0, status.stderr
    for case, job in jobs.items():
        line = next(line for line in status.stdout.splitlines() if f"case {case} " in line)
        assert re.search(rf"job {job} (RUNNING|COMPLETING|COMPLETED)", line), status.stdout


def test_signalled_job_checkpoints_requeues_and_ends_like_an_uninterrupted_run(two_cases):
    folder, jobs, _ = two_cases
    sig_log = folder / "logs" / f"sig_{jobs['sig']}.out"
    ref_log = folder / "logs" / f"ref_{jobs['ref']}.out"
    wait_for_line(sig_log, r"^Epoch 1/16", jobs["sig"])
    # what SLURM sends before the time limit (--signal=B:USR1@N), sent now
    subprocess.run(["scancel", "--signal=USR1", "--batch", jobs["sig"]], check=True)
    assert wait_for_job(jobs["sig"], sig_log, timeout=240) in ("COMPLETED", "")
    assert wait_for_job(jobs["ref"], ref_log) in ("COMPLETED", "")
    text = sig_log.read_text()
    assert "SIGUSR1" in text and "Stop requested: saved" in text, text
    assert "requeueing (last.pt: saved)" in text and re.search(r"start 1 on ", text), text
    assert "Resumed " in text and "training finished" in text, text
    runs = {case: Path(re.search(r"Run directory: (\S+)", (folder / "logs" / f"{case}_{job}.out").read_text()).group(1))
            for case, job in jobs.items()}
    assert len(set(re.findall(r"Run directory: (\S+)", text))) == 1          # the requeued job resumed the same run
    logs = {case: json.loads((run / "training_log.json").read_text()) for case, run in runs.items()}
    assert logs["sig"]["finished"] and logs["sig"]["slurm_job_id"] == jobs["sig"]
    assert [e["val_loss"] for e in logs["sig"]["epochs"]] == [e["val_loss"] for e in logs["ref"]["epochs"]]
    a, b = weights(runs["ref"] / "last.pt"), weights(runs["sig"] / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_real_sbatch_rejections_are_one_line(slurm, tmp_path, sample_data):
    cfg = tiny_config(tmp_path, "reject", sample_data)
    assert_one_error_line(run_cli("launch", cfg, *CPU_JOB, "--partition", "no_such_partition", "--yes", cwd=tmp_path),
                          "partition 'no_such_partition' does not exist")
    too_big = run_cli("launch", cfg, "--gpus-per-node", "0", "--cpus-per-task", "4096", "--partition", slurm,
                      "--yes", cwd=tmp_path)
    assert_one_error_line(too_big, "SLURM rejects it")
