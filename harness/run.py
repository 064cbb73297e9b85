"""`python -m harness.run [-m] key=value ...`: train one net per config, one MLflow run each.

    python -m harness.run -m depth=20,56 residual=true,false

The command line only: the run's life is `harness.job`, a sweep's is `harness.sweep`.
"""

import gc
import sys

import hydra
from omegaconf import DictConfig

from harness import config, plan
from harness.job import run_job
from harness.launchers import INTERRUPT_HOOKS

config.register()
# What is loaded by now (torch, MLflow, Hydra: about a million objects) lives as long as the
# process: the collector need never scan it again. Unfrozen, its full collections cost a
# default run about 2 s, 1.5 s of them at exit (docs/performance.md, "Where a run's time goes").
gc.freeze()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    if cfg.plan:  # a sweep's callback plans all its jobs before any starts, and stops the command
        try:
            config.check(cfg)
        except config.ConfigError as error:
            config.fail(str(error))
        return plan.show([cfg], None)
    return run_job(cfg)


def cli() -> None:
    """Bad overrides and Ctrl-C end the command with one line each, never a traceback."""
    try:
        config.check_overrides(sys.argv[1:])
    except config.ConfigError as error:
        config.fail(str(error))
    try:
        main()
    except KeyboardInterrupt:
        for hook in INTERRUPT_HOOKS:
            hook()
        if not INTERRUPT_HOOKS:
            print("stopped (Ctrl-C) before any run was opened", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
