"""The Slurm backend: every task one ``sbatch`` job (an array one ``sbatch --array``), watched by ``squeue``."""

from __future__ import annotations

from .cli import SlurmUnavailable
from .distributor import SlurmDistributor
from .node import SlurmWorkerNode

__all__ = ["SlurmDistributor", "SlurmUnavailable", "SlurmWorkerNode"]
