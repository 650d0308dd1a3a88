"""Mutated inputs (``.rec``, ``.idx``, ``property``, ``.bin``, checkpoints) through the CLI verbs.

Each example flips, truncates or inserts bytes in one file of a fresh workspace copy, then runs
``inspect``, ``convert --method blur``, ``verify`` or ``audit`` on it in this process. A verb
either succeeds or exits 2 with one ``error:`` line; an exception escaping ``main`` (a traceback)
fails the test, and so does any file written or changed outside the verb's output folder.
Examples are derandomised so CI runs the same ones every time.
"""
import contextlib
import io
import os
import shutil
import tempfile
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facemae_plugin import cli
from facemae_plugin.convert.secret import SECRET_SUFFIX
from tests.workspace import build_workspace, snapshot

OUT = "out"
VERBS = {
    "inspect-shard": ["inspect", "ds"],
    "convert": ["convert", "ds", OUT, "--method", "blur", "--workers", "0", "--batch-size", "4"],
    "inspect-bin": ["inspect", "val.bin"],
    "verify": ["verify", "val.bin", "--model", "mbf.pt", "--network", "mbf", "--device", "cpu"],
    "audit": ["audit", "--original", "ds", "--released", "released", "--model", "mbf.pt", "--network", "mbf",
              "--out", OUT, "--device", "cpu"],
    "convert-facemae": ["convert", "ds", OUT, "--checkpoint", "mae.pt", "--workers", "0", "--device", "cpu"],
}
CASES = [  # (file mutated, verb run on it)
    ("ds/train.rec", "inspect-shard"), ("ds/train.idx", "inspect-shard"), ("ds/property", "inspect-shard"),
    ("ds/train.rec", "convert"), ("ds/train.idx", "convert"), ("ds/property", "convert"),
    ("val.bin", "inspect-bin"), ("val.bin", "verify"), ("mbf.pt", "verify"),
    ("released/train.rec", "audit"), ("released/train.idx", "audit"), ("mbf.pt", "audit"),
    ("mae.pt", "convert-facemae"),
]
EXAMPLES_PER_CASE = 12

mutation = st.lists(st.tuples(st.sampled_from(["set", "truncate", "insert"]), st.floats(0, 1, exclude_max=True),
                              st.binary(min_size=1, max_size=4)), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("fuzz_pristine"))


def mutate(path, ops):
    data = bytearray(open(path, "rb").read())
    for kind, where, payload in ops:
        pos = int(where * len(data)) if data else 0
        if kind == "set":
            data[pos:pos + len(payload)] = payload
        elif kind == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = payload
    with open(path, "wb") as f:
        f.write(bytes(data))


def run_verb(root, argv):
    stderr = io.StringIO()
    absolute = [os.path.join(root, a) if os.path.exists(os.path.join(root, a)) or a == OUT else a for a in argv]
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main([*absolute, "--quiet"])
    return code, stderr.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("target,verb", CASES, ids=[f"{verb}:{target}" for target, verb in CASES])
def test_mutated_input_succeeds_or_fails_in_one_line(pristine, target, verb):
    @settings(max_examples=EXAMPLES_PER_CASE, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(ops=mutation)
    def check(ops):
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "ws")
            shutil.copytree(pristine, root)
            mutate(os.path.join(root, target), ops)
            before = snapshot(root)
            code, stderr = run_verb(root, VERBS[verb])
            lines = stderr.strip().splitlines()
            assert code in (0, 2), stderr
            if code == 2:
                assert len(lines) == 1 and lines[0].startswith(f"facemae {VERBS[verb][0]}: error: "), stderr
            after = snapshot(root)
            touched = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
            # a seeded conversion keeps its secret beside its output, and only where there is output
            beside = [OUT + SECRET_SUFFIX] if os.path.isdir(os.path.join(root, OUT)) else []
            outside = [p for p in touched if not p.startswith(OUT + os.sep) and p not in beside]
            assert not outside, f"written outside {OUT}/: {outside}"

    check()
