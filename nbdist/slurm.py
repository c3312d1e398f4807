"""Contract path of the Slurm backend; the code lives in :mod:`nbdist.backends.slurm`."""

from __future__ import annotations

from .backends.slurm import SlurmDistributor, SlurmUnavailable, SlurmWorkerNode

__all__ = ["SlurmDistributor", "SlurmUnavailable", "SlurmWorkerNode"]
