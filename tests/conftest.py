"""Suite-wide checks: every test file is collected when the whole suite runs; tests marked
``gpu`` skip themselves where torch sees no CUDA device (perf/gpu_check.sh runs them on one)."""

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: small lattices run faster and do not fight parallel
    jobs (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Skip ``gpu`` tests without CUDA; then fail the run when a ``tests/**/test_*.py`` file
    yields no test while the whole suite was asked for (a folder pytest skips, a file that does
    not import, a misnamed test)."""
    _skip_gpu_tests_without_cuda(items)
    asked = [Path(a.split("::")[0]).resolve() for a in config.args] or [Path.cwd()]
    if not any(TESTS == a or TESTS.is_relative_to(a) for a in asked):
        return
    expected = {p.resolve() for p in TESTS.rglob("test_*.py")
                if not any(part.startswith(".") for part in p.parts)}
    collected = {Path(str(item.path)).resolve() for item in items}
    missing = sorted(str(p.relative_to(TESTS.parent)) for p in expected - collected)
    if missing:
        raise pytest.UsageError(f"test files not collected (CI would never run them): "
                                f"{', '.join(missing)}")


def _skip_gpu_tests_without_cuda(items) -> None:
    """A skip mark (not a deselection: the file still counts as collected) on every test
    marked ``gpu`` when ``torch.cuda.is_available()`` is False."""
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA device (torch {torch.__version__} sees none)")
    for item in gpu:
        item.add_marker(skip)
