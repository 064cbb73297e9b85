"""`hydra/sweeper=sequential`: Hydra's basic sweeper, look after look of a study's design
(harness.grow). Hydra finds sweepers only in the `hydra_plugins` package; the work is harness's."""

from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class SequentialSweeperConf:
    _target_: str = "hydra_plugins.harness_sequential.SequentialSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="sequential", node=SequentialSweeperConf, provider="harness")


class SequentialSweeper(BasicSweeper):
    """The basic sweeper's grid of nets, its seeds grown by the study's design, one batch a look."""

    def sweep(self, arguments: list[str]) -> list:
        from harness.errors import ends_the_command
        from harness.grow import grow  # torch and MLflow, only where a study grows

        return ends_the_command(grow)(self, arguments)
