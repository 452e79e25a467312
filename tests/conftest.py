"""Shared test settings: the `cuda` marker, the data folder, the gradcheck record."""
import os
from pathlib import Path

import pytest

import tensorgrad

# The largest gradcheck error seen in the run, reported at the end (see check_grad).
GRADCHECK_RECORD = {"max_rel_error": 0.0, "max_abs_error": 0.0, "where": "", "count": 0}
GRADGRADCHECK_RECORD = {"max_rel_error": 0.0, "max_abs_error": 0.0, "where": "", "count": 0}


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU with CuPy (skipped otherwise)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if tensorgrad.cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU (CuPy not installed or no device)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _keep_tf32_setting():
    """The training CLI turns TF32 on for its whole process (CUPY_TF32 in os.environ);
    a test that runs it in-process must not leave later GPU tests on TF32."""
    before = os.environ.get("CUPY_TF32")
    yield
    if before is None:
        os.environ.pop("CUPY_TF32", None)
    else:
        os.environ["CUPY_TF32"] = before


def pytest_terminal_summary(terminalreporter):
    r = GRADCHECK_RECORD
    if r["count"]:
        terminalreporter.write_line(
            f"gradcheck: {r['count']} checks, largest abs error {r['max_abs_error']:.3g}, "
            f"largest relative error {r['max_rel_error']:.3g} ({r['where']})")
    r = GRADGRADCHECK_RECORD
    if r["count"]:
        terminalreporter.write_line(
            f"gradgradcheck: {r['count']} checks, largest abs error {r['max_abs_error']:.3g}, "
            f"largest relative error {r['max_rel_error']:.3g} ({r['where']})")


def data_dir():
    """The shared data folder ($TENSORGRAD_DATA, else ../shared/data beside the repo), or None."""
    env = os.environ.get("TENSORGRAD_DATA")
    for p in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2] / "shared" / "data",
                                             Path(__file__).resolve().parents[1] / "data"]:
        if p.is_dir():
            return p
    return None


@pytest.fixture
def shared_data():
    d = data_dir()
    if d is None:
        pytest.skip("shared data folder not found (set TENSORGRAD_DATA)")
    return d
