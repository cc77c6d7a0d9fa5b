"""`scaletrain` command line: train / eval / shards / export / analyze / launch / sweep.

The CLI only parses and calls the library. A `UserError` (bad key, missing
file, corrupt shard, ...) prints one line and exits with code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

from .errors import Preempted, UserError

EPILOG_TRAIN = """\
examples:
  scaletrain train                                   # default job: PGD-AT on sklearn digits
  scaletrain train configs/digits_standard.yaml      # standard training, for comparison
  scaletrain train train.epochs=5 tracking.wandb=false
  scaletrain train engine.zero_stage=2 method.attack.eps=0.3
  scaletrain train engine.launcher=ray engine.workers=2
  scaletrain train ensemble.size=5                   # 5 seeds on Ray Tune + ensemble evaluation

Overrides are OmegaConf dot-list items (key=value); lists as key=[a,b].
An unknown key or a wrong type stops with exit code 2 and names the key.
Outputs go to runs/<name>/ (config.yaml, report.json, report.md, robustness.png,
model.pt, checkpoints/, wandb/). W&B is offline unless you are logged in
(`wandb login`); tracking.wandb=false turns it off.
"""

def split_config_and_overrides(args: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """The first argument without '=' is the config file; the rest are overrides."""
    config, overrides = None, []
    for a in args:
        if "=" not in a and config is None and not overrides:
            config = a
        elif "=" not in a:
            raise UserError(f"unexpected argument '{a}': overrides look like key=value")
        else:
            overrides.append(a)
    return config, overrides


def _cmd_train(ns) -> int:
    from .config import load_config
    from .orchestrate import train
    config, overrides = split_config_and_overrides(ns.args)
    if config is None and os.path.exists(os.path.join("configs", "default.yaml")):
        config = os.path.join("configs", "default.yaml")
    cfg = load_config(config, overrides)
    if ns.print_config:
        from omegaconf import OmegaConf
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    train(cfg)
    return 0


def _cmd_sweep(ns) -> int:
    from .orchestrate import run_sweep
    summary = run_sweep(ns.sweep_file, ns.overrides)
    return 0 if summary["counts"]["ok"] or summary["counts"]["stopped"] else 1


def _cmd_eval(ns) -> int:
    from .evaluate.cli import eval_main
    return eval_main(ns.rest)


def _cmd_shards(ns) -> int:
    from .data.cli import shards_main
    return shards_main(ns.rest)


def _cmd_export(ns) -> int:
    from .engine.export import export_main
    return export_main(ns.rest)


def _cmd_analyze(ns) -> int:
    from .evaluate.analyze_cli import analyze_main
    return analyze_main(ns.rest)


def _cmd_launch(ns) -> int:
    from .orchestrate.launch import launch_main
    return launch_main(ns.rest)


_PASSTHROUGH = {"eval": _cmd_eval, "shards": _cmd_shards, "export": _cmd_export, "launch": _cmd_launch,
                "analyze": _cmd_analyze}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scaletrain",
        description="Train robust neural networks at scale: adversarial training and robustness "
                    "evaluation on one CPU or a GPU cluster (DeepSpeed, Ray, WebDataset, W&B).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `scaletrain COMMAND --help` for each command's options.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train (and evaluate) a model from a config",
                       description="Train a model from a YAML config plus key=value overrides, then run the "
                                   "robustness evaluation and write the report.",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]",
                   help="optional YAML config (default: configs/default.yaml if present, else the built-in "
                        "defaults), then overrides")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.set_defaults(fn=_cmd_train)

    w = sub.add_parser("sweep", help="run a hyperparameter / ensemble sweep on Ray Tune",
                       description="Run every trial of a sweep file (configs/sweeps/*.yaml) as a full scaletrain "
                                   "run on Ray Tune, then write results.csv/json, summary.md and plots to "
                                   "<out_dir>/<name>/. Re-running the same command continues an interrupted "
                                   "sweep, skipping finished trials (docs/sweeps.md).",
                       epilog="examples:\n  scaletrain sweep configs/sweeps/digits_eps.yaml\n"
                              "  scaletrain sweep configs/sweeps/digits_eps.yaml concurrency=1 train.epochs=2\n\n"
                              "Sweep keys (name, concurrency, num_samples, scheduler.name, ...) change the sweep; "
                              "other key paths are experiment overrides for every trial.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("sweep_file", metavar="SWEEP.yaml")
    w.add_argument("overrides", nargs="*", metavar="key=value")
    w.set_defaults(fn=_cmd_sweep)

    for name, fn, helptext in (
            ("eval", _cmd_eval, "evaluate trained runs (one, or an ensemble) with the robustness suite"),
            ("shards", _cmd_shards, "write WebDataset shards from digits / IDX / npz / image folders"),
            ("export", _cmd_export, "export a run's weights as a plain fp32 state_dict"),
            ("analyze", _cmd_analyze, "sensitivity analysis of a run: input gradients, Lipschitz, weight noise, "
                                      "ODE step size"),
            ("launch", _cmd_launch, "submit a run to a Ray cluster (Ray Jobs API)")):
        s = sub.add_parser(name, help=helptext, add_help=False,
                           description=f"{helptext} (see `scaletrain {name} --help`)")
        s.add_argument("rest", nargs=argparse.REMAINDER)
        s.set_defaults(fn=fn)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in _PASSTHROUGH:
        # these commands own their argparse (and --help); hand them the rest verbatim
        ns = argparse.Namespace(command=argv[0], rest=argv[1:], fn=_PASSTHROUGH[argv[0]])
    else:
        ns = parser.parse_args(argv)
    try:
        return int(ns.fn(ns) or 0)
    except UserError as e:
        print(f"scaletrain {ns.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except Preempted as e:  # checkpoint written: rerun with resume=auto (docs/engine.md)
        print(f"scaletrain {ns.command}: {e} (exit {e.exit_code})", file=sys.stderr)
        return e.exit_code
    except FloatingPointError as e:  # engine/guards.py: the run diverged (train.stop_on_nonfinite)
        print(f"scaletrain {ns.command}: error: {e}. The checkpoints written before it are kept; "
              "lower optim.lr (or set train.stop_on_nonfinite=false to train on)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"scaletrain {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
