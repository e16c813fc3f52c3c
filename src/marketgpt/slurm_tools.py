"""Talking to SLURM's client tools (sinfo, sbatch): each failure one line that says what SLURM said.

Shared by the job scripts of training runs (cluster.py), the launcher (cluster_launch.py) and the walk-forward
job array (cluster_walkforward.py). Module top stays light: the CLI imports it on every command.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from .errors import MarketGPTError


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MarketGPTError(f"{name} not found on PATH: the SLURM client tools are missing here "
                             f"(run this on a login node of the cluster, or `module load slurm`)")
    return path


def run_tool(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MarketGPTError(f"`{' '.join(cmd)}` did not answer within {timeout:.0f} s (is slurmctld up?)") from None


def first_error_line(result: subprocess.CompletedProcess) -> str:
    """The line of a failed SLURM command that says what went wrong, without the `sbatch: error:` prefix."""
    lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    line = errors[-1] if errors else (lines[0] if lines else f"exit code {result.returncode}")
    return re.sub(r"^\w+: error: ", "", line)


def partitions() -> dict[str, bool]:
    """Partition name -> is the default, from `sinfo`."""
    result = run_tool([require_tool("sinfo"), "-h", "-o", "%P"])
    if result.returncode:
        raise MarketGPTError(f"sinfo failed: {first_error_line(result)}")
    out = {}
    for line in result.stdout.split():
        out[line.rstrip("*")] = line.endswith("*")
    return out


def check_partition(name: str) -> None:
    known = partitions()
    if name not in known:
        listed = ", ".join(p + (" (default)" if d else "") for p, d in known.items()) or "none"
        raise MarketGPTError(f"partition '{name}' does not exist on this cluster; partitions: {listed} "
                             f"(use --partition)")


def cluster_state() -> str:
    result = run_tool([require_tool("sinfo"), "-o", "%12P %.5a %.11l %.6D %.10T %.16G %N"])
    if result.returncode:
        raise MarketGPTError(f"sinfo failed: {first_error_line(result)}")
    return result.stdout.rstrip()


def dry_run_submit(script: Path) -> str:
    """`sbatch --test-only`: SLURM checks the script and whether the resources can ever be had, submits nothing."""
    result = run_tool([require_tool("sbatch"), "--test-only", str(script)])
    if result.returncode:
        raise MarketGPTError(f"{script}: SLURM rejects it: {first_error_line(result)}")
    line = (result.stderr.strip() or result.stdout.strip() or "accepted").splitlines()[-1].removeprefix("sbatch: ")
    return re.sub(r"^Job \d+ to start", "would start", line)    # --test-only names a job id it never uses


def submit(script: Path, *options: str) -> str:
    """sbatch --parsable [OPTIONS] SCRIPT; returns the job id (of an array: the array's)."""
    result = run_tool([require_tool("sbatch"), "--parsable", *options, str(script)])
    if result.returncode:
        raise MarketGPTError(f"sbatch {script} failed: {first_error_line(result)}")
    return result.stdout.strip().split(";")[0]
