"""The suite's own pytest settings (pyproject.toml): pytest-timeout ends a hung test instead of
holding a run forever."""
from __future__ import annotations

import subprocess
import sys
import time

from conftest import REPO


def test_pytest_timeout_is_configured(pytestconfig):
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) >= 1200 and pytestconfig.getini("timeout_method") == "thread"


def test_a_hung_test_is_stopped(tmp_path):
    """Under the project's pytest settings a test that hangs ends with a timeout, not never."""
    (tmp_path / "test_hang.py").write_text(
        "import time, pytest\n\n@pytest.mark.timeout(2)\ndef test_hangs():\n    time.sleep(120)\n")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "-p", "no:cacheprovider",
                        str(tmp_path / "test_hang.py")], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode != 0 and time.time() - t0 < 30
    assert "Timeout" in r.stdout + r.stderr, r.stdout[-2000:]
