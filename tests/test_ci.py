"""python -m pytest tests/test_ci.py -v

The suite's own rule (tests/conftest.py): in CI (CI=true) no test skips silently. A test, or a whole file,
that would be skipped for a missing package, file or platform fails there instead.
"""

import os
import subprocess
import sys

import pytest

from conftest import REPO

SKIPPED_TEST = '''
import pytest

def test_skipped():
    pytest.skip("needs a package this machine lacks")

def test_runs():
    pass
'''
SKIPPED_FILE = '''
import pytest
pytest.importorskip("no_such_package_here")

def test_never_collected():
    pass
'''


@pytest.mark.slow
@pytest.mark.parametrize("ci", [True, False])
def test_a_skip_fails_in_ci(tmp_path, ci):
    """With CI=true a skipped test, and a file skipped while collected, fail the run; without it they skip."""
    (tmp_path / "test_a.py").write_text(SKIPPED_TEST)
    (tmp_path / "test_b.py").write_text(SKIPPED_FILE)
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "CI": "true" if ci else ""}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                          "--continue-on-collection-errors"], cwd=tmp_path, env=env, capture_output=True, text=True)
    if ci:
        assert out.returncode == 1 and out.stdout.count("skipped in CI, where every test must run") == 4, out.stdout
        assert "1 failed, 1 passed, 1 error" in out.stdout  # (each is named in the details and in the summary)
    else:
        assert out.returncode == 0 and "1 passed, 2 skipped" in out.stdout, out.stdout
