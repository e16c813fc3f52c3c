"""A walk-forward as a SLURM job array: `marketgpt slurm CONFIG --walkforward --folds K [--max-parallel M]`.

At submit time the plan is written (walkforward.make_plan: fold dates, per-fold settings), so every task reads the
same plan and none decides the folds on its own. Two scripts come out of it:

- `<log_dir>/<case>_walkforward.sh`: a job array `--array=0-{K-1}[%M]`, task i running
  `marketgpt walkforward CONFIG ... --fold i -o WF_DIR`. Like a training job it asks for SIGUSR1 before its time
  limit, has the trainer save last.pt and requeues itself; the requeued task runs the same command, which resumes
  the fold (a finished fold is left as it is, a trained one is only evaluated again). The fold directory is fixed
  by the plan, so no job record is needed.
- `<log_dir>/<case>_walkforward_stitch.sh`: one CPU job, submitted with `--dependency=afterok:<array job id>`,
  running `marketgpt walkforward --stitch -o WF_DIR` once every fold has finished.

`--submit` submits both (otherwise the commands are printed). With `--warm-start` fold f needs fold f-1's weights:
the array is throttled to one task at a time (`%1`) and `--submit` chains the folds, each task an array of one
submitted with `--dependency=afterok:` on the one before, so a requeued fold still holds back the next one; a fold
started before its predecessor finished refuses to run (walkforward.run_fold).
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from .cluster import (SlurmOptions, TRAPS, _case_name, _load, device_env, requeue_lines, sbatch_header,
                      step_until_done)
from .config import writable_dir, writable_file
from .errors import MarketGPTError

STITCH_MEM = "2G"     # the stitch reads the folds' parquet tables and draws one plot


def _wf_args(settings: dict) -> list[str]:
    """The walkforward command's options that rebuild exactly this plan (make_plan checks them against it)."""
    args = ["--folds", str(settings["folds"]), "--test-days", str(settings["test_days"]),
            "--val-days", str(settings["val_days"]), "--mode", settings["mode"],
            "--embargo", str(settings["embargo_days"]),
            "--horizons", ",".join(map(str, settings["horizons"])) or "1", "--samples", str(settings["samples"])]
    if settings.get("warm_start"):
        args.append("--warm-start")
    if settings.get("seeds", 1) > 1:
        args += ["--seeds", str(settings["seeds"])]
    for text in settings["overrides"]:
        args += ["--set", text]
    return args


def array_spec(folds: int, max_parallel: int | None, warm_start: bool) -> str:
    if warm_start:
        return f"0-{folds - 1}%1"
    if max_parallel is not None and max_parallel < folds:
        return f"0-{folds - 1}%{max_parallel}"
    return f"0-{folds - 1}"


def array_script(options: SlurmOptions, case: str, settings: dict, wf_dir: Path, script: Path,
                 max_parallel: int | None = None) -> str:
    """The job array: one task per fold of the plan in wf_dir."""
    q = shlex.quote
    log_dir = options.log_dir.rstrip("/") or "."
    spec = array_spec(settings["folds"], max_parallel, bool(settings.get("warm_start")))
    workdir, header = sbatch_header(options, case, f"{log_dir}/{case}_%A_%a", extra=(f"--array={spec}",))
    step = (f'srun --ntasks=1 --cpus-per-task="${{SLURM_CPUS_PER_TASK:-{options.cpus}}}" --kill-on-bad-exit=0 '
            f'"$PYTHON" -m marketgpt.cli walkforward "$CONFIG" "${{WF_ARGS[@]}}" --fold "$FOLD" -o "$WF_DIR"')
    done = 'grep -q \'"status": "done"\' "$RUN_DIR/fold.json" 2>/dev/null'
    saved = '{ compgen -G "$RUN_DIR/last.pt" || compgen -G "$RUN_DIR/seed_*/last.pt"; } >/dev/null'
    return f"""#!/bin/bash
# MarketGPT walk-forward {case}: {settings['folds']} folds as a job array ({spec}), one task per fold,
# each {options.describe()}.
# Written by `marketgpt slurm --walkforward` on {datetime.now().isoformat(timespec="seconds")}; the plan is
# {q(str(wf_dir / 'walkforward.json'))}.
# Submit from any folder (the job runs in {q(workdir)}), then the stitch job once the array has finished:
#   jid=$(sbatch --parsable {q(str(script.absolute()))})
#   sbatch --dependency=afterok:$jid {q(str(stitch_path(script).absolute()))}
# About {options.signal_seconds} s before the time limit SLURM sends SIGUSR1 to this shell; the trainer saves
# last.pt, the task requeues itself and resumes its fold.
{header}

set -uo pipefail

PYTHON={q(options.python)}
CONFIG={q(settings['config'])}
WF_DIR={q(str(wf_dir))}
WF_ARGS=({" ".join(q(a) for a in _wf_args(settings))})
FOLD=${{SLURM_ARRAY_TASK_ID:?a job array task: submit this script with sbatch}}
printf -v RUN_DIR '%s/fold_%02d' "$WF_DIR" "$FOLD"

{device_env(options)}
export PYTHONUNBUFFERED=1

say() {{ echo "[$(date '+%F %T')] marketgpt job ${{SLURM_JOB_ID}} (fold $FOLD): $*"; }}
say "start ${{SLURM_RESTART_COUNT:-0}} on ${{SLURM_JOB_NODELIST:-?}}: fold directory $RUN_DIR"

{TRAPS}
{step_until_done(step, done, "fold finished")}{requeue_lines("$RUN_DIR", saved)}say "fold stopped with exit code $RC; resume it with: sbatch --array=$FOLD {q(str(script))}"
exit "$RC"
"""


def stitch_script(options: SlurmOptions, case: str, wf_dir: Path) -> str:
    """The final job: stitch the folds' out-of-sample tables and write the summary (CPU, one task)."""
    q = shlex.quote
    log_dir = options.log_dir.rstrip("/") or "."
    small = replace(options, nodes=1, gpus_per_node=0, cpus_per_task=1, mem=STITCH_MEM)
    _, header = sbatch_header(small, f"{case}_stitch", f"{log_dir}/{case}_stitch_%j", requeue=False)
    return f"""#!/bin/bash
# MarketGPT walk-forward {case}: stitch the folds into oos.parquet and the summary, in
# {q(str(wf_dir))}.
# Submit it after the array: sbatch --dependency=afterok:ARRAY_JOB_ID THIS_SCRIPT
{header}

set -euo pipefail
export PYTHONUNBUFFERED=1
{q(options.python)} -m marketgpt.cli walkforward --stitch -o {q(str(wf_dir))}
"""


def stitch_path(script: Path) -> Path:
    return script.with_name(script.name.removesuffix(".sh") + "_stitch.sh")


def write_scripts(cfg_path, options: SlurmOptions, wf: dict, wf_dir=None, output=None, max_parallel=None,
                  log=print) -> tuple[Path, Path, Path]:
    """Plan the walk-forward (or check the plan already in wf_dir) and write the array and stitch scripts.
    wf: the walk-forward keyword arguments of walkforward.make_plan. Returns (wf_dir, array script, stitch script)."""
    from .cluster_launch import check_data
    from .walkforward import default_out, make_plan, read_plan

    options.check(("CONFIG", cfg_path), ("--wf-dir", wf_dir), ("-o", output))
    if str(output) == "-":
        raise MarketGPTError("--walkforward writes two scripts (the array and the stitch job); give -o a path, not -")
    if options.nodes != 1 or options.gpus_per_node > 1:
        raise MarketGPTError(f"--walkforward: a fold trains in one process on one node; got --nodes {options.nodes} "
                             f"--gpus-per-node {options.gpus_per_node} (use --nodes 1 and --gpus-per-node 0 or 1)")
    if options.run_dir:
        raise MarketGPTError("--walkforward: --run-dir does not apply (each fold's run directory is WF_DIR/fold_NN); "
                             "use --wf-dir")
    if max_parallel is not None and max_parallel < 1:
        raise MarketGPTError(f"--max-parallel must be at least 1, got {max_parallel}")
    cfg = _load(cfg_path, options.overrides)
    check_data(cfg, str(cfg_path))
    wf_dir = Path(wf_dir or default_out(cfg_path, options.overrides)).resolve()
    make_plan(cfg_path, wf_dir, overrides=options.overrides, log=log, **wf)
    settings = read_plan(wf_dir)[0]["settings"]
    case = _case_name(options.job_name or f"{cfg.name}_walkforward")
    script = Path(output) if output else Path(options.log_dir) / f"{case}.sh"
    writable_dir(options.log_dir, "log folder (--log-dir)")
    stitch = stitch_path(script)
    for path, text in ((script, array_script(options, case, settings, wf_dir, script, max_parallel)),
                       (stitch, stitch_script(options, case, wf_dir))):
        writable_file(path, "job script")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(path)
    return wf_dir, script, stitch


def submit_scripts(script: Path, stitch: Path, folds: int, warm_start: bool, partition: str) -> tuple[list[str], str]:
    """Submit the array (with --warm-start: one task after another, chained by afterok) and the stitch job after
    it. Returns (array job ids, stitch job id)."""
    from .slurm_tools import check_partition, require_tool, submit

    require_tool("sbatch")
    check_partition(partition)
    if warm_start:
        ids: list[str] = []
        for fold in range(folds):
            ids.append(submit(script, f"--array={fold}", *([f"--dependency=afterok:{ids[-1]}"] if ids else [])))
    else:
        ids = [submit(script)]
    return ids, submit(stitch, f"--dependency=afterok:{ids[-1]}")


def cmd_slurm_walkforward(args, options: SlurmOptions) -> int:
    from .walkforward import wf_kwargs

    wf = wf_kwargs(args)
    wf_dir, script, stitch = write_scripts(args.config, options, wf, args.wf_dir, args.output, args.max_parallel)
    print(f"wrote {script} (job array, one task per fold: {options.describe()}) and {stitch} (the stitch job)")
    if not args.submit:
        print(f"submit with: jid=$(sbatch --parsable {script}) && sbatch --dependency=afterok:$jid {stitch}")
        return 0
    ids, stitch_id = submit_scripts(script, stitch, wf["folds"], wf.get("warm_start", False), options.partition)
    print(f"submitted the folds: job{'s' if len(ids) > 1 else ''} {', '.join(ids)}; the stitch job {stitch_id} "
          f"runs after them; the walk-forward directory is {wf_dir}")
    print(f"follow them with: squeue -j {','.join(ids + [stitch_id])}")
    return 0


def add_options(p) -> None:
    """The walk-forward options of `marketgpt slurm` (the same as `marketgpt walkforward`'s, plus the array's)."""
    from .config import POSITIVE, bounded
    from .walkforward import walkforward_options

    g = p.add_argument_group("walk-forward as a job array (--walkforward)")
    g.add_argument("--walkforward", action="store_true",
                   help="a job array with one task per fold of a walk-forward, and a stitch job after it")
    walkforward_options(g, slurm=True)
    g.add_argument("--max-parallel", type=bounded(int, POSITIVE), help="at most this many folds at once (%%M)")
    g.add_argument("--wf-dir", help="walk-forward directory (default CHECKPOINT_DIR/<name>_walkforward)")
    g.add_argument("--submit", action="store_true", help="submit the array and the stitch job (sbatch)")


def refuse_without_walkforward(args) -> None:
    """Walk-forward options given to a plain `marketgpt slurm` are a mistake, not something to ignore."""
    from .walkforward import WF_OPTIONS

    given = [name for name in (*WF_OPTIONS, "max_parallel", "wf_dir", "submit") if getattr(args, name, None)]
    if given:
        raise MarketGPTError(f"--{given[0].replace('_', '-')} applies to a walk-forward: add --walkforward")
