"""joblib's ``nbdist`` backend on the suite's real Slurm: scikit-learn's grid search gives the kernel's
scores, and an error in one call kills the other call's Slurm job before ``Parallel`` raises.

Skips without a reachable Slurm (``scripts/slurm-local.sh start``), like ``test_functions_slurm.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config
from slurm_helpers import use_local_slurm, wait_no_live_jobs

from nbdist import Session, State

pytestmark = pytest.mark.slurm

slurm_cluster = pytest.fixture(scope="module", autouse=True)(use_local_slurm)


def sleep_or_fail(x):
    if x == 0:
        time.sleep(0.5)
        raise KeyError("the first call fails")
    time.sleep(120)
    return x


def test_grid_search_and_an_aborted_parallel_on_the_real_slurm(tmp_path, monkeypatch):
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    monkeypatch.chdir(tmp_path)
    X, y = make_classification(n_samples=200, n_features=6, random_state=0)
    expected = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=3).fit(X, y)  # in the kernel
    with Session(backend="slurm", root=str(tmp_path / "root")) as session:
        with parallel_config(backend="nbdist", session=session, n_jobs=2, memory="500M", runtime="5m"):
            search = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=3).fit(X, y)
            np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                                       expected.cv_results_["mean_test_score"])
            start = time.monotonic()
            with pytest.raises(KeyError, match="the first call fails"):
                Parallel(batch_size=1)(delayed(sleep_or_fail)(i) for i in range(2))
            assert time.monotonic() - start < 90  # not the 120 s the other call sleeps
        jobs = session.jobs()
        assert {job.name for job in jobs} == {"fit_and_score", "sleep_or_fail"}
        assert sorted(job.state.value for job in jobs if job.name == "sleep_or_fail") == ["FAILED", "KILLED"]
        assert all(job.state is State.DONE for job in jobs if job.name == "fit_and_score")
    assert wait_no_live_jobs() == []
