"""The `slurm`, `launch` and `status` commands: their options, and the SlurmOptions they make (cluster.py writes
the scripts). Module top stays light: the CLI imports this module on every command."""

from __future__ import annotations

import sys

from .cluster import SlurmOptions, job_script, write_job_script


def _slurm_options(p) -> None:
    d = SlurmOptions()
    g = p.add_argument_group("SLURM resources (defaults: the guide's 1 node with 2×A100)")
    g.add_argument("--nodes", type=int, default=d.nodes, help="nodes; >1 trains across nodes (c10d rendezvous)")
    g.add_argument("--gpus-per-node", type=int, help=f"GPUs per node (default {d.gpus_per_node}; 1 per task with "
                                                     f"--walkforward); 0 makes a CPU job")
    g.add_argument("--gpu-type", default=d.gpu_type, help="GRES GPU type, '' for any (default %(default)s)")
    g.add_argument("--partition", default=d.partition, help="partition (default %(default)s)")
    g.add_argument("--time", default=d.time, help="time limit D-HH:MM:SS (default %(default)s)")
    g.add_argument("--cpus-per-gpu", type=int, default=d.cpus_per_gpu, help="CPUs per GPU (default %(default)s)")
    g.add_argument("--mem-per-gpu", default=d.mem_per_gpu, help="memory per GPU (default %(default)s)")
    g.add_argument("--cpus-per-task", type=int, help="CPUs per node, instead of cpus-per-gpu × GPUs")
    g.add_argument("--mem", help="memory per node, instead of mem-per-gpu × GPUs")
    g.add_argument("--account", help="SLURM account to charge")
    g.add_argument("--signal-seconds", type=int, default=d.signal_seconds,
                   help="SIGUSR1 this many seconds before the limit: save last.pt and requeue (default %(default)s)")
    g.add_argument("--log-dir", default=d.log_dir, help="job logs <case>_<jobid>.out/.err (default %(default)s)")
    t = p.add_argument_group("training")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value in the job's train command (repeatable)")
    t.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--python", default=sys.executable, help="Python of the job (default: this one, %(default)s)")


def options_from_args(args) -> SlurmOptions:
    overrides = list(args.set)
    if args.gradient_checkpointing:
        overrides.append("training.gradient_checkpointing=true")
    if args.compile:
        overrides.append("training.compile=true")
    gpus = args.gpus_per_node
    if gpus is None:
        gpus = 1 if getattr(args, "walkforward", False) else SlurmOptions.gpus_per_node
    return SlurmOptions(nodes=args.nodes, gpus_per_node=gpus, gpu_type=args.gpu_type,
                        partition=args.partition, time=args.time, cpus_per_gpu=args.cpus_per_gpu,
                        mem_per_gpu=args.mem_per_gpu, cpus_per_task=args.cpus_per_task, mem=args.mem,
                        account=args.account, signal_seconds=args.signal_seconds, log_dir=args.log_dir,
                        overrides=overrides, python=args.python,
                        run_dir=getattr(args, "run_dir", None), job_name=getattr(args, "job_name", None))


def cmd_slurm(args) -> int:
    from . import cluster_walkforward as wf

    options = options_from_args(args)
    if args.walkforward:
        return wf.cmd_slurm_walkforward(args, options)
    wf.refuse_without_walkforward(args)
    if args.output == "-":
        sys.stdout.write(job_script(args.config, options))
        return 0
    path = write_job_script(args.config, options, args.output)
    print(f"wrote {path}: {options.describe()}")
    print(f"submit with: sbatch {path}")
    return 0


def cmd_launch(args) -> int:
    from .cluster_launch import launch

    jobs = launch(args.configs, options_from_args(args), yes=args.yes)
    return 0 if jobs else 1


def cmd_status(args) -> int:
    from .cluster_status import status_command

    return status_command(args.run_dirs, all_runs=args.all, root=args.root, watch=args.watch,
                          interval=args.interval, as_json=args.json)


def add_commands(sub) -> None:
    """Register `slurm`, `launch` and `status` on the `marketgpt` parser."""
    p = sub.add_parser("slurm", help="write an sbatch script for a config (1 or more nodes, GPUs or CPU)",
                       description="Write an sbatch script that trains CONFIG with srun + torchrun (c10d rendezvous "
                                   "on the first node), checkpoints and requeues itself before the time limit; with "
                                   "--walkforward, a job array with one task per fold and a stitch job after it.")
    p.add_argument("config", help="config JSON")
    p.add_argument("-o", "--output", help="script path (default <log-dir>/<case>.sh; '-' prints it)")
    p.add_argument("--job-name", help="job and log name (default: the config's name)")
    p.add_argument("--run-dir", help="train in this run directory (resumes it when it holds last.pt)")
    _slurm_options(p)
    from .cluster_walkforward import add_options

    add_options(p)
    p.set_defaults(func=cmd_slurm)

    p = sub.add_parser("launch", help="check configs and data, show the cluster, confirm, submit one job per config",
                       description="Submit several cases at once (e.g. configs/case_a.json configs/case_b.json) "
                                   "and write <log-dir>/monitor.sh to follow them.")
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="config JSON files, one job each")
    p.add_argument("-y", "--yes", action="store_true", help="submit without asking")
    _slurm_options(p)
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("status", help="progress of runs: epoch, losses, best, ETA, SLURM state, newest checkpoint")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories (default: --all)")
    p.add_argument("--all", action="store_true", help="every run under --root")
    p.add_argument("--root", default="checkpoints", help="checkpoint root for --all (default %(default)s)")
    p.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between refreshes (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_status)


__all__ = ["add_commands", "options_from_args"]
