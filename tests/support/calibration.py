"""One `kit calibrate` per test session, shared by the test modules that want this host's costs."""

import json
import os
import tempfile

from conftest import run_kit

_result = {}


def calibrate(rounds=3):
    """(completed process, path) of a fresh calibration into a temporary file; run once per session."""
    if "path" not in _result:
        path = os.path.join(tempfile.mkdtemp(prefix="kit-cal-"), "calibration.json")
        p = run_kit("calibrate", "--rounds", str(rounds), "--json", env=dict(os.environ, KIT_CALIBRATION=path),
                    timeout=300)
        _result.update(proc=p, path=path)
    return _result["proc"], _result["path"]


def calibrated_env(monkeypatch_env):
    """Points kit subprocesses at the session's calibration; returns the calibration."""
    p, path = calibrate()
    assert p.returncode == 0, p.stderr
    monkeypatch_env["KIT_CALIBRATION"] = path
    return json.loads(p.stdout)
