"""Cluster operations on SLURM: job scripts (one or more nodes, torchrun with c10d rendezvous), requeue before the
time limit, a launcher for several cases at once, and the status of runs (`cluster_status`).

Python API: `SlurmOptions`, `job_script(cfg_path, options) -> str`, `write_job_script(cfg_path, options) -> Path`;
from `cluster_launch`: `launch(configs, options, yes=...) -> list[Submitted]`, `check_data(cfg)`; from
`cluster_status`: `run_status(run_dir) -> dict`, `format_status(statuses) -> str`. The walk-forward's job array is
in `cluster_walkforward`, the calls to sinfo and sbatch in `slurm_tools`.

How a job survives its time limit: the script asks SLURM for SIGUSR1 to the batch shell `signal_seconds` before the
limit (`--signal=B:USR1@N`). The shell's trap forwards SIGTERM to the job step (`scancel --signal=TERM JOBID`, which
reaches the torchrun agents and the trainer processes on every node, not the batch shell); each trainer finishes
its current step, all ranks agree to stop, rank 0 saves RUN_DIR/last.pt and they exit. The shell then runs
`scontrol requeue $SLURM_JOB_ID` (`#SBATCH --requeue`); the requeued job (same job id, SLURM_RESTART_COUNT > 0)
reads its run directory from `CHECKPOINT_ROOT/.slurm_jobs/JOBID`, written at first start, and `train --run-dir`
resumes from last.pt.

Module top stays light: the CLI imports this module on every command.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .config import check_text, writable_dir, writable_file
from .errors import MarketGPTError

JOB_RECORDS = ".slurm_jobs"          # CHECKPOINT_ROOT/.slurm_jobs/<JOBID> holds the run directory of that job
TIME_PATTERN = re.compile(r"^(\d+-\d{1,2}(:\d{1,2}){0,2}|\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE)$", re.IGNORECASE)
MEM_PATTERN = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
SLURM_NAME = re.compile(r"[\w.-]+")            # accounts, GRES types, job names
SLURM_NAMES = re.compile(r"[\w.-]+(,[\w.-]+)*")  # a partition, or several separated by commas
PLAIN_PATH = re.compile(r"[\w./~+-]+")          # a path that an #SBATCH line can carry as it is


def time_limit_seconds(text: str) -> int | None:
    """SLURM's time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds; None if unlimited.

    Only the leading field may be as large as it likes (90 minutes); the others are clock fields (0:99:99 is no
    time, and SLURM would read it as something else than was meant)."""
    if not TIME_PATTERN.match(text):
        raise MarketGPTError(f"--time {text}: expected D-HH:MM:SS, HH:MM:SS, MM:SS or minutes")
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    limits = ([24, 60, 60] if days else [None, 60, 60])[:len(parts)]
    for value, limit in zip(parts, limits):
        if limit is not None and value >= limit:
            raise MarketGPTError(f"--time {text}: {value} is not a valid "
                                 f"{'hour' if limit == 24 else 'minute or second'} (below {limit})")
    if days:
        parts += [0] * (3 - len(parts))                  # D-HH, D-HH:MM
        hours, minutes, seconds = parts
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, (minutes, seconds) = 0, (parts + [0])[:2]  # minutes, or MM:SS
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclass
class SlurmOptions:
    """What a job asks SLURM for. Defaults are the guide's: 1 node, 1 task per node, 2 A100s with 32 CPUs and
    64G each (64 CPUs, 128G), 7 days on partition `long`."""

    nodes: int = 1
    gpus_per_node: int = 2            # 0: a CPU job (one gloo process per node)
    gpu_type: str = "a100"            # --gres=gpu:TYPE:N; "" for --gres=gpu:N
    partition: str = "long"
    time: str = "7-00:00:00"
    cpus_per_gpu: int = 32
    mem_per_gpu: str = "64G"
    cpus_per_task: int | None = None  # CPUs per node; default cpus_per_gpu × GPUs (cpus_per_gpu for a CPU job)
    mem: str | None = None            # memory per node; default mem_per_gpu × GPUs (mem_per_gpu for a CPU job)
    account: str | None = None
    job_name: str | None = None       # default: the config's name (the case)
    log_dir: str = "logs"
    signal_seconds: int = 300         # SIGUSR1 this long before the time limit: checkpoint and requeue
    run_dir: str | None = None        # a fixed run directory (resumed when it holds last.pt)
    overrides: list[str] = field(default_factory=list)   # --set section.key=value for the trainer
    python: str = sys.executable

    def check(self, *paths: tuple[str, object]) -> None:
        """Every value is checked before it is written into the script: numbers in range, and each text that
        becomes an #SBATCH or shell line through `check_text` (no newline, no shell syntax in SLURM names), with
        the (option, path) pairs of the paths the script names (a newline would end a comment and start a command)."""
        for option, value, pattern, expected in (
                ("--partition", self.partition, SLURM_NAMES, "partition names separated by commas"),
                ("--account", self.account, SLURM_NAME, "an account name"),
                ("--job-name", self.job_name, SLURM_NAME, "letters, digits and . _ -"),
                ("--gpu-type", self.gpu_type or None, SLURM_NAME, "a GRES type such as a100"),
                ("--log-dir", self.log_dir, PLAIN_PATH, "a path without spaces"),
                ("--run-dir", self.run_dir, None, ""), ("--python", self.python, None, ""),
                *(("--set", text, None, "") for text in self.overrides),
                *((option, None if path is None else str(path), None, "") for option, path in paths)):
            if value is not None:
                check_text(value, option, pattern, expected)
        if self.nodes < 1:
            raise MarketGPTError(f"--nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise MarketGPTError(f"--gpus-per-node must be 0 (CPU job) or more, got {self.gpus_per_node}")
        if self.cpus_per_gpu < 1 or (self.cpus_per_task is not None and self.cpus_per_task < 1):
            raise MarketGPTError("CPU counts must be positive")
        limit = time_limit_seconds(self.time)
        for name, value in (("--mem-per-gpu", self.mem_per_gpu), ("--mem", self.mem)):
            if value is not None and not MEM_PATTERN.match(value):
                raise MarketGPTError(f"{name} {value}: expected a size like 64G or 500M")
        if self.signal_seconds < 1:
            raise MarketGPTError(f"--signal-seconds must be positive, got {self.signal_seconds}")
        if limit is not None and limit <= self.signal_seconds:
            raise MarketGPTError(f"--time {self.time} is not longer than --signal-seconds {self.signal_seconds}: "
                                 f"the job would be told to stop as soon as it starts")

    @property
    def cpus(self) -> int:
        if self.cpus_per_task is not None:
            return self.cpus_per_task
        return self.cpus_per_gpu * max(self.gpus_per_node, 1)

    @property
    def memory(self) -> str:
        if self.mem is not None:
            return self.mem.upper()
        number, unit = re.match(r"^(\d+)([KMGT]?)$", self.mem_per_gpu, re.IGNORECASE).groups()
        return f"{int(number) * max(self.gpus_per_node, 1)}{unit.upper()}"

    @property
    def gres(self) -> str | None:
        if not self.gpus_per_node:
            return None
        return f"gpu:{self.gpu_type}:{self.gpus_per_node}" if self.gpu_type else f"gpu:{self.gpus_per_node}"

    def describe(self) -> str:
        where = f"{self.nodes} node{'s' if self.nodes > 1 else ''}"
        what = (f"{self.gpus_per_node} GPU{'s' if self.gpus_per_node > 1 else ''} ({self.gres})"
                if self.gpus_per_node else "CPU only")
        return f"{where} × {what}, {self.cpus} CPUs, {self.memory} per node, {self.time} on partition {self.partition}"


# --- pieces of every job script ------------------------------------------------------------------------------------

def sbatch_header(options: SlurmOptions, case: str, log_stem: str, requeue: bool = True,
                  extra: tuple[str, ...] = ()) -> tuple[str, str]:
    """(the job's working directory, the #SBATCH lines) for `options`; logs go to LOG_STEM.out/.err."""
    sbatch = [f"--job-name={case}", f"--partition={options.partition}"]
    if options.account:
        sbatch.append(f"--account={options.account}")
    sbatch += [f"--nodes={options.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={options.cpus}"]
    if options.gres:
        sbatch.append(f"--gres={options.gres}")
    # SLURM opens the log files before the script runs, relative to the job's working directory: pinning it to
    # this directory (where write_job_script creates the log folder) makes the script work from any submit folder.
    workdir = check_text(str(Path.cwd()), "working directory")
    sbatch += [f"--chdir={workdir}" if PLAIN_PATH.fullmatch(workdir) else f'--chdir="{workdir}"',
               f"--mem={options.memory}", f"--time={options.time}",
               f"--output={log_stem}.out", f"--error={log_stem}.err", "--open-mode=append", *extra]
    if requeue:
        sbatch += ["--requeue", f"--signal=B:USR1@{options.signal_seconds}"]
    return workdir, "\n".join(f"#SBATCH {line}" for line in sbatch)


def device_env(options: SlurmOptions) -> str:
    gpus = options.gpus_per_node
    if gpus:
        visible = ",".join(str(i) for i in range(gpus))
        return (f'export CUDA_VISIBLE_DEVICES="${{CUDA_VISIBLE_DEVICES:-{visible}}}"   # keep the GPUs SLURM '
                f"assigned, if it says\nexport PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:512\n"
                f'export OMP_NUM_THREADS=$(( ${{SLURM_CPUS_PER_TASK:-{options.cpus}}} / {gpus} ))')
    return f'export OMP_NUM_THREADS="${{SLURM_CPUS_PER_TASK:-{options.cpus}}}"'


# SIGUSR1 before the time limit: the step is told to stop (SIGTERM: the trainer saves last.pt) and the job requeues
TRAPS = """STOP=""
on_usr1() {
    STOP=requeue
    say "SIGUSR1 (time limit near): asking the trainer to save last.pt"
    scancel --signal=TERM "$SLURM_JOB_ID"   # every job step on every node; not this shell
}
on_term() {
    [ -z "$STOP" ] || return 0              # SLURM ends the shell of a job being requeued
    STOP=term
    say "SIGTERM (cancelled or preempted): the trainer saves last.pt; waiting for it"
}
trap on_usr1 USR1
trap on_term TERM
"""


def run_step(command: str) -> str:
    """The job step in the background (so the traps run), waited for through interrupted `wait`s; its exit code
    in RC."""
    return f"""if [ -z "$STOP" ]; then
    {command} &
    STEP=$!
    while :; do
        wait "$STEP"; RC=$?
        kill -0 "$STEP" 2>/dev/null || break     # a trap interrupted `wait`: keep waiting for the step
    done
else
    RC=0
fi
"""


def step_until_done(step: str, done: str, message: str) -> str:
    """finished() (the shell test `done`), the step run and waited for, and exit 0 with `message` once done."""
    return f"""finished() {{ {done}; }}

{run_step(step)}
if finished; then
    say "{message}: $RUN_DIR"
    exit 0
fi
"""


def requeue_lines(what: str, saved: str = '[ -f "$RUN_DIR/last.pt" ]') -> str:
    """What the shell does after a SIGUSR1: requeue itself (same job id), the next start resumes WHAT. `saved`:
    the shell test that a checkpoint is there."""
    return f"""if [ "$STOP" = requeue ]; then
    say "requeueing (last.pt: $( {saved} && echo saved || echo none )); the next start resumes {what}"
    scontrol requeue "$SLURM_JOB_ID" && sleep 300   # SLURM ends this shell while requeueing
    exit 1
fi
"""


# --- the job script ---------------------------------------------------------------------------------------------

def _load(cfg_path: str | Path, overrides: list[str]):
    from .config import load_config

    return load_config(cfg_path, list(overrides))


def _case_name(name: str) -> str:
    safe = re.sub(r"[^\w.-]", "_", name)
    return safe or "run"


def job_script(cfg_path: str | Path, options: SlurmOptions | None = None, script_path: str | Path | None = None) -> str:
    """The sbatch script that trains `cfg_path` with `options` (the config is checked; paths in the script are
    relative to the submit directory, except the config, which is absolute)."""
    options = options or SlurmOptions()
    options.check(("CONFIG", cfg_path), ("-o", script_path))
    cfg = _load(cfg_path, options.overrides)
    case = _case_name(options.job_name or cfg.name)
    config = Path(cfg_path).resolve()
    log_dir = options.log_dir.rstrip("/") or "."
    gpus = options.gpus_per_node
    nproc = max(gpus, 1)
    q = shlex.quote

    workdir, header = sbatch_header(options, case, f"{log_dir}/{case}_%j")

    train_args = []
    for text in options.overrides:
        train_args += ["--set", text]
    fixed_run_dir = q(options.run_dir) if options.run_dir else '""'
    created = datetime.now().isoformat(timespec="seconds")
    script = script_path or f"{log_dir}/{case}.sh"
    done = 'grep -q \'"finished": true\' "$RUN_DIR/training_log.json" 2>/dev/null'
    step = (f'srun --ntasks-per-node=1 --cpus-per-task="${{SLURM_CPUS_PER_TASK:-{options.cpus}}}" --kill-on-bad-exit=0 '
            f'\\\n        "$PYTHON" -m torch.distributed.run \\\n'
            f'        --nnodes="${{SLURM_JOB_NUM_NODES:-1}}" --nproc-per-node="$NPROC_PER_NODE" \\\n'
            f'        --rdzv-backend=c10d --rdzv-endpoint="$HEAD:$PORT" --rdzv-id="marketgpt-$SLURM_JOB_ID" \\\n'
            f'        -m marketgpt.cli train "$CONFIG" --run-dir "$RUN_DIR" "${{TRAIN_ARGS[@]}}"')

    return f"""#!/bin/bash
# MarketGPT training job for case {case}: {options.describe()}.
# Written by `marketgpt slurm` on {created}. The job runs in {q(workdir)} (--chdir), which the log and
# checkpoint paths are relative to, so it can be submitted from any folder:
#   sbatch {q(str(Path(script).absolute()))}
# About {options.signal_seconds} s before the time limit SLURM sends SIGUSR1 to this shell; the trainer saves
# last.pt, the job requeues itself and resumes the same run directory (see docs/cluster.md).
{header}

set -uo pipefail

PYTHON={q(options.python)}
CONFIG={q(str(config))}
CASE={q(case)}
CHECKPOINT_ROOT={q(cfg.training.checkpoint_dir)}
FIXED_RUN_DIR=${{MARKETGPT_RUN_DIR:-{fixed_run_dir}}}   # sbatch --export=ALL,MARKETGPT_RUN_DIR=... resumes a run
GPUS_PER_NODE={gpus}
NPROC_PER_NODE={nproc}
TRAIN_ARGS=({" ".join(q(a) for a in train_args)})

{device_env(options)}
export PYTHONUNBUFFERED=1

say() {{ echo "[$(date '+%F %T')] marketgpt job ${{SLURM_JOB_ID}}: $*"; }}

# The run directory: chosen at the first start and recorded, so that a requeued job resumes the same one.
RECORD="$CHECKPOINT_ROOT/{JOB_RECORDS}/$SLURM_JOB_ID"
if [ -n "$FIXED_RUN_DIR" ]; then
    RUN_DIR=$FIXED_RUN_DIR
elif [ "${{SLURM_RESTART_COUNT:-0}}" -gt 0 ] && [ -s "$RECORD" ]; then
    RUN_DIR=$(cat "$RECORD")
else
    mkdir -p "$CHECKPOINT_ROOT"
    RUN_DIR="$CHECKPOINT_ROOT/${{CASE}}_$(date +%Y%m%d_%H%M%S)"
    n=1; base=$RUN_DIR
    until mkdir "$RUN_DIR" 2>/dev/null; do n=$((n + 1)); RUN_DIR="${{base}}_$n"; done
fi
mkdir -p "$(dirname "$RECORD")" && echo "$RUN_DIR" > "$RECORD"

if [ "${{SLURM_JOB_NUM_NODES:-1}}" -gt 1 ]; then
    HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)   # c10d rendezvous on the first node
else
    HEAD=127.0.0.1
fi
PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))

say "start ${{SLURM_RESTART_COUNT:-0}} on ${{SLURM_JOB_NODELIST:-?}}: ${{SLURM_JOB_NUM_NODES:-1}} node(s) x $NPROC_PER_NODE process(es), run directory $RUN_DIR"

{TRAPS}
{step_until_done(step, done, "training finished")}{requeue_lines("$RUN_DIR")}say "training stopped with exit code $RC; resume with: sbatch --export=ALL,MARKETGPT_RUN_DIR=$RUN_DIR {q(str(script))}"
exit "$RC"
"""


def default_script_path(cfg_path: str | Path, options: SlurmOptions) -> Path:
    cfg = _load(cfg_path, options.overrides)
    return Path(options.log_dir) / f"{_case_name(options.job_name or cfg.name)}.sh"


def write_job_script(cfg_path: str | Path, options: SlurmOptions | None = None, output: str | Path | None = None) -> Path:
    """Write the sbatch script for a config (default `<log_dir>/<case>.sh`) and create the log folder, which
    SLURM does not create itself."""
    options = options or SlurmOptions()
    path = Path(output) if output else default_script_path(cfg_path, options)
    text = job_script(cfg_path, options, path)
    writable_dir(options.log_dir, "log folder (--log-dir)")
    writable_file(path, "job script")
    path.write_text(text)
    path.chmod(0o755)
    return path


__all__ = ["SlurmOptions", "job_script", "write_job_script"]
