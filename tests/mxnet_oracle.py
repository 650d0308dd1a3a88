"""Real MXNet as a test oracle, run in its own virtual environment.

MXNet 1.9.1 needs numpy < 1.24, so it cannot live in the project's venv. Tests
hand it a small script and exchange data through files: JSON for keys and
labels, raw files for payloads. The interpreter is ``$FACEMAE_MXNET_PYTHON``,
else ``<repo>/.venv-mxnet/bin/python``.

Use the ``mxnet_python`` fixture (import it into a test module) to get the
interpreter; without one the test is skipped, or fails when ``$CI`` is set,
because CI must not pass by skipping the oracle.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "FACEMAE_MXNET_PYTHON"
DEFAULT_VENV_PYTHON = REPO_ROOT / ".venv-mxnet" / "bin" / "python"
SETUP_HINT = "run `make oracle` to create .venv-mxnet (mxnet 1.9.1, numpy<1.24)"


def find_mxnet_python():
    """Path of the oracle interpreter, or ``None`` when there is none."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    if os.access(DEFAULT_VENV_PYTHON, os.X_OK):
        return str(DEFAULT_VENV_PYTHON)
    return None


def require_mxnet_python():
    """The oracle interpreter; skips the calling test without one (fails under ``$CI``)."""
    python = find_mxnet_python()
    if python is None:
        where = os.environ.get(ENV_VAR) or str(DEFAULT_VENV_PYTHON)
        reason = f"MXNet oracle interpreter not found at {where} (set ${ENV_VAR} or {SETUP_HINT})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def run_oracle(python, script, args=(), cwd=None, timeout=300):
    """Run ``script`` with ``python -c`` and string ``args``; returns its stdout.

    ``cwd`` should be a scratch directory: the script's ``sys.path[0]`` is the
    working directory, and the oracle must not import this project by accident.
    A failing script raises with its stderr in the message.
    """
    command = [os.fspath(python), "-c", script, *(os.fspath(a) for a in args)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MXNET_STORAGE_FALLBACK_LOG_VERBOSE"] = "0"
    try:
        done = subprocess.run(
            command, check=True, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
        )
    except subprocess.CalledProcessError as error:
        raise AssertionError(
            f"oracle script failed with exit code {error.returncode}:\n{error.stderr}"
        ) from None
    return done.stdout


def run_oracle_json(python, script, args=(), cwd=None, timeout=300):
    """``run_oracle`` for scripts that print one JSON value as their last stdout line."""
    stdout = run_oracle(python, script, args, cwd=cwd, timeout=timeout)
    lines = stdout.strip().splitlines()
    if not lines:
        raise AssertionError("oracle script printed nothing; expected a JSON line")
    return json.loads(lines[-1])


def write_json(path, value):
    """Write ``value`` as JSON for an oracle script to read; returns the path."""
    Path(path).write_text(json.dumps(value))
    return Path(path)


def read_json(path):
    return json.loads(Path(path).read_text())
