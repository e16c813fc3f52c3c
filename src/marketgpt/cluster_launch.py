"""`marketgpt launch`: several cases at once. Every config and its data are checked, the cluster is shown, each
case's script goes through `sbatch --test-only`, and after a confirmation one job per case is submitted, with
`<log_dir>/monitor.sh` to follow them.

Python API: `launch(configs, options, yes=...) -> list[Submitted]`, `check_data(cfg)`.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .cluster import SlurmOptions, _case_name, _load, write_job_script
from .errors import MarketGPTError
from .slurm_tools import check_partition, cluster_state, dry_run_submit, require_tool, submit


def check_data(cfg, source: str = "config") -> str:
    """Whether a config's candles are there: network providers (yfinance, ccxt) must have been downloaded;
    the sample and files providers fill the cache themselves on first use."""
    from .data import CandleCache, download_command, get_provider, load_universe

    d = cfg.data
    provider = get_provider(d.provider)
    universe = load_universe(d.universe)
    if provider.offline:
        return f"{len(universe)} assets from provider {d.provider} (cached on first use)"
    cache = CandleCache(d.data_dir or None, d.provider)
    missing = [s for s in universe.symbol if not cache.exists(s)]
    if missing:
        raise MarketGPTError(
            f"{source}: no cached data for {len(missing)} of {len(universe)} assets of universe '{d.universe}' under "
            f"{cache.root} (first: {missing[0]}); run `{download_command(d.universe, d.provider, d.data_dir)}` first")
    return f"{len(universe)} assets cached under {cache.root}"


@dataclass
class Submitted:
    case: str
    config: str
    script: Path
    job_id: str
    out: Path
    err: Path


def monitor_script(jobs: list[Submitted], log_dir: Path, roots: list[str] = ("checkpoints",)) -> Path:
    ids = ",".join(j.job_id for j in jobs)
    logs = " ".join(shlex.quote(str(p)) for j in jobs for p in (j.out, j.err))
    status = "\n".join(f"{shlex.quote(sys.executable)} -m marketgpt.cli status --all --root {shlex.quote(r)}"
                       for r in roots)
    path = log_dir / "monitor.sh"
    path.write_text(f"""#!/bin/bash
# Follow the jobs submitted by `marketgpt launch` on {datetime.now().isoformat(timespec="seconds")}:
# queue state, run status, then the logs as they grow (Ctrl-C to stop).
cd {shlex.quote(str(Path.cwd()))}
squeue -j {ids} -o "%.10i %.10P %.20j %.9T %.10M %.11l %.5D %R"
{status}
exec tail -n 20 -F {logs}
""")
    path.chmod(0o755)
    return path


def confirm(question: str, input_fn=input) -> bool:
    """Ask on stdin; no stdin (closed, /dev/null, end of input) means no."""
    try:
        answer = input_fn(question)
    except (EOFError, OSError, RuntimeError):     # RuntimeError: no sys.stdin at all
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def launch(configs: list[str | Path], options: SlurmOptions | None = None, yes: bool = False, log=print,
           input_fn=input) -> list[Submitted]:
    """Check every config and its data, show the cluster, confirm, submit one job per config, write
    `<log_dir>/monitor.sh`, and say how to follow the jobs. Returns the submitted jobs ([] if not confirmed)."""
    options = options or SlurmOptions()
    options.check()
    if not configs:
        raise MarketGPTError("launch: give at least one config")
    cases: dict[str, tuple[str, object]] = {}
    for path in configs:
        cfg = _load(path, options.overrides)
        info = check_data(cfg, str(path))
        case = _case_name(cfg.name)
        if case in cases:
            raise MarketGPTError(f"{path}: case name '{case}' is also used by {cases[case][0]}; give each config its "
                                 f"own `name` (it names the job, the logs and the run directory)")
        cases[case] = (str(path), cfg)
        log(f"config {path}: case {case}, {info}")
    require_tool("sbatch")
    check_partition(options.partition)
    log("cluster state (sinfo):")
    log(cluster_state())

    log_dir = Path(options.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    scripts = []
    for case, (path, cfg) in cases.items():
        per_case = SlurmOptions(**{**options.__dict__, "job_name": case})
        script = write_job_script(path, per_case, log_dir / f"{case}.sh")
        estimate = dry_run_submit(script)
        scripts.append((case, path, script))
        log(f"  {case}: {options.describe()}; script {script}; {estimate}")
    total_gpus = options.nodes * options.gpus_per_node * len(scripts)
    question = (f"submit {len(scripts)} job(s)" + (f" ({total_gpus} GPUs in all)" if total_gpus else "")
                + f" to partition {options.partition}? [y/N] ")
    if not yes and not confirm(question, input_fn):
        log("nothing submitted (no confirmation; pass --yes to submit without asking)")
        return []

    jobs = []
    for case, path, script in scripts:
        job_id = submit(script)
        jobs.append(Submitted(case, path, script, job_id, log_dir / f"{case}_{job_id}.out",
                              log_dir / f"{case}_{job_id}.err"))
    roots = sorted({cfg.training.checkpoint_dir for _, cfg in cases.values()})
    monitor = monitor_script(jobs, log_dir, roots)
    for j in jobs:
        log(f"submitted {j.case}: job {j.job_id}; log {j.out} (errors {j.err})")
    log("follow them with:")
    log(f"  squeue -j {','.join(j.job_id for j in jobs)}")
    for j in jobs:
        log(f"  tail -f {j.out}")
    for root in roots:
        log(f"  marketgpt status --all --root {shlex.quote(root)}")
    log(f"  {monitor}        # all of the above")
    log(f"cancel with: scancel {' '.join(j.job_id for j in jobs)}")
    return jobs
