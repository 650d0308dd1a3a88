"""benchmarks/synth_headroom.py: the originals' error ratio per (detail, epochs) cell, from real protocol steps."""
import json
import os

import pytest

from tests.conftest import load_benchmark_script
from tests.helpers import TOY


def read_step(cell_dir, name):
    with open(os.path.join(cell_dir, "steps", f"{name}.done.json")) as f:
        return json.load(f)


def test_a_cell_trains_on_the_detailed_data_and_reports_the_originals_error_ratio(tmp_path):
    bench = load_benchmark_script("synth_headroom")
    row = bench.measure_cell(str(tmp_path), 0.5, 1, ["pixelate 8", "blur s3"], progress=False, base=TOY)
    cell = tmp_path / "d0.5-e1"
    protocol = json.loads((cell / "protocol.json").read_text())
    assert protocol["data"]["detail"] == 0.5 and protocol["recogniser"]["num_epoch"] == 1
    assert protocol["data"]["train_identities"] == TOY["data"]["train_identities"]  # the base is kept
    assert row["original"] == read_step(cell, "verify-original-s0")["accuracy_flip"]
    assert row["blur s3"] == read_step(cell, "verify-blur_s3-s0")["accuracy_flip"]
    best = max(row["pixelate 8"], row["blur s3"])
    assert row["originals_error_ratio"] == pytest.approx((1 - row["original"]) / (1 - best))
    table = bench.markdown([row], ["pixelate 8", "blur s3"])
    assert table.splitlines()[2].startswith("| 0.5 | 1 | ") and table.count("\n") == 2
