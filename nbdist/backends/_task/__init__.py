"""Running one task, the same way for every backend: the runner, the exit-info file, the worker node and ``nbdist-worker``."""
