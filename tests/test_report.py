"""Results tables, the trade-off verdict and the benchmark's row plan, against hand-computed values."""
import json
import os

import numpy as np
import pytest

from facemae_plugin.protocol import benchmark as bench
from facemae_plugin.protocol.spec import ProtocolError, merge_protocol
from facemae_plugin.protocol.report import markdown_table, matched_ratio_table, plot_tradeoff, tradeoff_panels
from facemae_plugin.protocol.verdicts import (aggregate, matched_leakage_verdict, tradeoff_verdict, with_target_check,
                                             worst_columns)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row(variant, method, seed, accuracy, leak):
    return {"variant": variant, "method": method, "seed": seed, "accuracy": accuracy, "error": 1 - accuracy,
            "tar_at_far": accuracy / 2, "instance_rank1": leak, "identity_rank1": min(1.0, leak * 2),
            "source_tar_at_far": leak / 2, "informed_instance_rank1": leak / 3}


def audited(r, pixels):
    """``r`` as ``Experiment.row`` ends it: the pixel attacker's figures and the worst case over the attackers."""
    r.update(pixels_instance_rank1=pixels, pixels_reid_rank1=pixels / 2, reid_rank1=r["instance_rank1"] / 4)
    return {**r, **worst_columns(r)}


def entry(variant, method, error, leak):
    return {"variant": variant, "method": method, "seeds": [0], "error": (error, 0.0),
            "instance_rank1": (leak, 0.0), "accuracy": (1 - error, 0.0)}


def teacher_tradeoff(summary, **kwargs):
    """The verdict on one attacker's column: the rows here carry one leakage figure, ``instance_rank1``."""
    return tradeoff_verdict(summary, "instance_rank1", **kwargs)


def teacher_matched(summary, **kwargs):
    return matched_leakage_verdict(summary, "instance_rank1", **kwargs)


def test_aggregate_is_numpy_mean_and_population_std_per_variant_in_first_seen_order():
    rows = [row("b", "blur", 0, 0.80, 0.9), row("a", "facemae", 0, 0.90, 0.2), row("b", "blur", 1, 0.70, 0.7),
            row("b", "blur", 2, 0.75, 0.8)]
    summary = aggregate(rows)
    assert [e["variant"] for e in summary] == ["b", "a"]
    assert summary[0]["seeds"] == [0, 1, 2]
    assert summary[0]["accuracy"] == pytest.approx((np.mean([0.8, 0.7, 0.75]), np.std([0.8, 0.7, 0.75])))
    assert summary[1]["instance_rank1"] == pytest.approx((0.2, 0.0))


def test_markdown_table_shows_std_only_for_repeated_rows():
    table = markdown_table(aggregate([row("b", "blur", 0, 0.8, 0.9), row("b", "blur", 1, 0.7, 0.7),
                                      row("a", "facemae", 0, 0.9, 0.25)]))
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| variant | seeds |")
    assert "| b | 2 | 75.00 ± 5.00 |" in lines[2]
    assert "| a | 1 | 90.00 | 10.00 |" in lines[3] and "±" not in lines[3]


def test_verdict_holds_at_half_the_error_of_the_best_baseline_that_leaks_as_much():
    summary = [entry("FaceMAE full 0.75", "facemae", 0.10, 0.20), entry("FaceMAE paste 0.75", "facemae", 0.08, 0.40),
               entry("blur", "blur", 0.25, 0.95), entry("noise", "noise", 0.21, 0.50),
               entry("masked", "masked", 0.05, 0.10)]  # more accurate but leaks less: not comparable
    verdict = teacher_tradeoff(summary)
    assert verdict["best_baseline"] == "noise"
    assert verdict["error_ratio"] == pytest.approx(0.10 / 0.21)
    assert verdict["holds"] is True and verdict["leaks_less_than_paste"] is True


def test_verdict_fails_when_error_is_not_halved_or_paste_leaks_less():
    base = [entry("blur", "blur", 0.15, 0.95)]
    not_halved = teacher_tradeoff([entry("FaceMAE full 0.75", "facemae", 0.10, 0.2)] + base)
    assert not_halved["holds"] is False and not_halved["error_ratio"] == pytest.approx(0.10 / 0.15)
    paste_better = teacher_tradeoff([entry("FaceMAE full 0.75", "facemae", 0.05, 0.3),
                                     entry("FaceMAE paste 0.75", "facemae", 0.05, 0.2)] + base)
    assert paste_better["holds"] is False and paste_better["leaks_less_than_paste"] is False
    assert teacher_tradeoff(base)["holds"] is None


def test_verdict_says_when_even_the_originals_cannot_reach_the_bar():
    rows = [entry("FaceMAE full 0.75", "facemae", 0.214, 0.75), entry("pixelate 8", "pixelate", 0.156, 0.926),
            entry("blur s6", "blur", 0.23, 0.449)]
    ceiling = teacher_tradeoff(rows + [entry("original", "original", 0.128, 1.0)])
    assert ceiling["best_baseline"] == "pixelate 8"
    assert ceiling["original_ratio"] == pytest.approx(0.128 / 0.156)
    assert "no release can reach 0.50" in ceiling["text"]
    room = teacher_tradeoff(rows + [entry("original", "original", 0.05, 1.0)])
    assert room["original_ratio"] == pytest.approx(0.05 / 0.156) and "no release" not in room["text"]
    assert teacher_tradeoff(rows)["original_ratio"] is None


def test_matched_verdict_interpolates_each_family_to_facemaes_leakage():
    ours = entry("FaceMAE full 0.75", "facemae", 0.10, 0.40)
    rows = [ours, entry("original", "original", 0.05, 1.0),
            entry("blur s3", "blur", 0.06, 0.90), entry("blur s6", "blur", 0.30, 0.20),  # bracket 0.40
            entry("pixelate 16", "pixelate", 0.15, 0.40),  # leaks exactly as much
            entry("noise 25", "noise", 0.04, 1.0)]  # only the originals' side: unmatched
    verdict = teacher_matched(rows)
    blur = verdict["families"]["blur"]
    assert blur["error"] == pytest.approx(0.06 + (0.40 - 0.90) / (0.20 - 0.90) * (0.30 - 0.06))
    assert blur["ratio"] == pytest.approx(0.10 / blur["error"]) and "blur s6 and blur s3" in blur["between"]
    assert verdict["families"]["pixelate"]["error"] == pytest.approx(0.15)
    assert verdict["families"]["noise"] is None and "masked" not in verdict["families"]
    assert "noise: every row leaks more" in verdict["text"]
    assert verdict["holds"] is False  # pixelate alone already errs less than twice as often
    assert teacher_matched(rows[:4] + rows[5:])["holds"] is None  # blur passes, noise undecided
    matched = teacher_matched(rows[:5] + [entry("noise 200", "noise", 0.60, 0.10)])
    noise = matched["families"]["noise"]  # between noise 200 and the originals (strength 0)
    assert noise["error"] == pytest.approx(0.60 + (0.40 - 0.10) / (1.0 - 0.10) * (0.05 - 0.60))
    assert matched["holds"] is (max(f["ratio"] for f in matched["families"].values()) <= 0.5)
    assert matched["holds"] is False and "Claim does not hold here." in matched["text"]
    best = min(f["error"] for f in matched["families"].values())  # noise's, interpolated
    assert matched["original_ratio"] == pytest.approx(0.05 / best) and "no release can" not in matched["text"]
    assert teacher_matched([e for e in rows if e["method"] != "original"])["original_ratio"] is None


def test_matched_verdict_holds_only_when_every_family_errs_twice_as_often():
    rows = [entry("FaceMAE full 0.75", "facemae", 0.10, 0.40), entry("original", "original", 0.05, 1.0),
            entry("blur s6", "blur", 0.30, 0.20), entry("pixelate 16", "pixelate", 0.25, 0.30)]
    verdict = teacher_matched(rows)
    assert verdict["holds"] is True and "Claim holds." in verdict["text"]
    assert teacher_matched(rows[1:])["holds"] is None
    assert teacher_matched(rows[:2])["holds"] is None  # no baseline row beyond the originals


def test_matched_ratio_table_has_a_line_per_facemae_row_and_attacker():
    # row(): informed leakage is a third of the teacher's
    rows = [row("original", "original", 0, 0.95, 0.9), row("FaceMAE full 0.75", "facemae", 0, 0.80, 0.6),
            row("FaceMAE full 0.9", "facemae", 0, 0.70, 0.2), row("blur s6", "blur", 0, 0.50, 0.3)]
    lines = matched_ratio_table(aggregate(rows)).splitlines()
    assert lines[0].endswith("| vs blur |") and len(lines) == 2 + 2 * 2  # no pixelate/noise/masked rows
    teacher = 0.50 + (0.6 - 0.3) / (0.9 - 0.3) * (0.05 - 0.50)  # between blur s6 and the originals
    informed = 0.50 + (0.2 - 0.1) / (0.3 - 0.1) * (0.05 - 0.50)
    assert lines[2] == f"| FaceMAE full 0.75 | teacher | 60.0 | 20.00 | {0.20 / teacher:.2f} |"
    assert lines[3] == f"| FaceMAE full 0.75 | informed | 20.0 | 20.00 | {0.20 / informed:.2f} |"
    assert lines[4] == "| FaceMAE full 0.9 | teacher | 20.0 | 30.00 | – |"  # blur s6 leaks more


def test_tradeoff_plot_is_a_png_with_a_panel_per_attacker(tmp_path):
    summary = aggregate([row("a", "facemae", 0, 0.9, 0.2), row("o", "original", 0, 0.95, 1.0),
                         row("b", "blur", 0, 0.8, 0.5)])
    assert tradeoff_panels(summary) == [("instance_rank1", "teacher"), ("informed_instance_rank1", "informed")]
    path = plot_tradeoff(summary, str(tmp_path / "t.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_tradeoff_plot_leaves_out_an_attacker_no_row_was_audited_by(tmp_path):
    rows = [row("a", "facemae", 0, 0.9, 0.2), row("o", "original", 0, 0.95, 1.0)]
    for r in rows:
        r["informed_instance_rank1"] = None  # a run without the informed attacker
    summary = aggregate(rows)
    assert tradeoff_panels(summary) == [("instance_rank1", "teacher")]
    assert os.path.isfile(plot_tradeoff(summary, str(tmp_path / "t.png")))


def test_benchmark_runs_every_variants_first_seed_before_any_repeat():
    a, b, c = ({"name": n, "seeds": s} for n, s in (("a", [0, 1, 2]), ("b", [0]), ("c", [5, 6])))
    plan = [(v["name"], seed) for v, seed in bench.planned_rows([a, b, c])]
    assert plan == [("a", 0), ("b", 0), ("c", 5), ("a", 1), ("c", 6), ("a", 2)]
    assert [(v["name"], s) for v, s in bench.planned_rows([a, b, c], only=["c"])] == [("c", 5), ("c", 6)]


@pytest.mark.parametrize("name", ["privacy_utility_synth.py", "privacy_utility_synth_detail.py", "privacy_utility_frontier.py",
                                  "privacy_utility_smoke.py"])
def test_shipped_benchmark_configs_load_and_name_known_methods(name):
    protocol, variants, _ = bench.load_benchmark_config(os.path.join(ROOT, "benchmarks", "configs", name))
    names = [v["name"] for v in variants]
    assert len(names) == len(set(names)) and "FaceMAE full 0.75" in names and "original" in names
    merge_protocol(protocol)  # every protocol key is one the experiment knows


def test_a_rows_worst_case_is_its_largest_figure_per_threat_and_names_the_attacker():
    worst = audited(row("blur s6", "blur", 0, 0.8, 0.4), pixels=0.99)  # informed: 0.4 / 3
    assert worst["worst_instance_rank1"] == 0.99 and worst["worst_instance_attacker"] == "pixels"
    assert worst["worst_reid_rank1"] == pytest.approx(0.495) and worst["worst_reid_attacker"] == "pixels"
    teacher = audited(row("FaceMAE full 0.75", "facemae", 0, 0.8, 0.6), pixels=0.1)
    assert teacher["worst_instance_rank1"] == 0.6 and teacher["worst_instance_attacker"] == "teacher"


def test_benchmark_results_judge_each_threat_by_its_worst_case(tmp_path):
    rows = [audited(row("original", "original", 0, 0.95, 1.0), 1.0),
            audited(row("FaceMAE full 0.75", "facemae", 0, 0.80, 0.5), 0.3),
            audited(row("blur s3", "blur", 0, 0.94, 0.99), 1.0), audited(row("blur s9", "blur", 0, 0.55, 0.2), 0.2)]
    experiment = type("Run", (), {"protocol": {"seed": 0}})()
    summary, verdicts, table = bench.write_results(experiment, rows, str(tmp_path), "python bench.py")
    report = (tmp_path / "results.md").read_text()
    assert all(v["text"] in report for v in verdicts.values()) and table in report
    assert table.splitlines()[0].index("worst-case rank-1 instance") < table.splitlines()[0].index("teacher")
    assert matched_ratio_table(summary) in report and "| FaceMAE full 0.75 | worst case |" in report
    assert [v["text"].split(" (")[0] for v in verdicts.values()] == ["verdict", "verdict", "matched-leakage verdict",
                                                                     "matched-leakage verdict"]
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    assert list(saved)[5:9] == ["verdict", "verdict_reid", "verdict_matched", "verdict_matched_reid"]
    assert saved["attackers"] == list(bench.ATTACKER_TEXT)
    # worst 0.5 (the teacher's) between blur s9 (0.2) and, at 1.0, the more accurate of blur s3 and the originals
    blur = saved["verdict_matched"]["families"]["blur"]
    assert blur["error"] == pytest.approx(0.45 + (0.5 - 0.2) / (1.0 - 0.2) * (0.05 - 0.45))
    assert saved["verdict_matched_reid"]["leakage"] == pytest.approx(0.3 / 2)  # pixels' 0.15 over the teacher's 0.125


def test_a_calibrated_variant_is_held_to_its_target_by_the_whole_releases_worst_case(tmp_path):
    """Calibration sees a subset and no trained attacker but the teacher: the row checks the release."""
    def calibrated(name, sigma, teacher, pixels):
        r = {**row(name, "blur", 0, 0.7, teacher), "target_leakage": 0.05,
             "setting": {"name": name, "method": "blur", "sigma": sigma}}
        return with_target_check(audited(r, pixels))

    held = calibrated("blur at 5% (held)", 12.5, teacher=0.02, pixels=0.04)
    missed = calibrated("blur at 5% (missed)", 9.0, teacher=0.03, pixels=0.3)  # pixels finds more on the release
    plain = with_target_check(audited(row("blur s6", "blur", 0, 0.8, 0.4), pixels=0.9))
    assert (held["target_met"], missed["target_met"], plain["target_met"]) == (True, False, None)
    experiment = type("Run", (), {"protocol": {"seed": 0}})()
    bench.write_results(experiment, [held, missed, plain], str(tmp_path), "python bench.py")
    report = (tmp_path / "results.md").read_text()
    assert ("- blur at 5% (missed) (seed 0): calibrated to sigma=9; the whole release's worst case is 30.00% "
            "instance (pixels), which MISSES the target 5.00%") in report
    assert "blur at 5% (held) (seed 0): calibrated to sigma=12.5" in report and "4.00% instance (pixels), which meets" \
        in report
    assert "blur s6 (seed" not in report


def test_a_benchmark_config_may_leave_out_the_trained_attackers_but_never_pixels_or_the_teacher(tmp_path):
    def config(attackers):
        path = tmp_path / "bench.py"
        path.write_text(f"variants = [dict(name='original', method='original')]\nattackers = {attackers!r}\n")
        return path

    assert bench.load_benchmark_config(config(None))[2] == ("pixels", "verbatim", "teacher", "informed", "adaptive")
    # named in any order, run in the suite's order; the verbatim attacker needs no model and always runs
    assert bench.load_benchmark_config(config(["teacher", "pixels", "informed"]))[2] == \
        ("pixels", "verbatim", "teacher", "informed")
    text = bench.attackers_text(("pixels", "teacher", "informed"))
    assert "Not run (the config" in text and "adaptive" in text.split("Not run (the config")[1]
    full = bench.attackers_text(tuple(bench.ATTACKER_TEXT))
    assert "Not run (the config" not in full and "Not run here: reapply" in full
    for bad, named in ((["teacher"], "pixels"), (["pixels"], "teacher"), (["pixels", "teacher", "oracle"], "oracle"),
                       ("pixels", "list")):
        with pytest.raises(ProtocolError, match=named):
            bench.load_benchmark_config(config(bad))


def test_benchmark_json_leads_each_variant_with_its_worst_case_and_the_attackers_that_reached_it():
    from facemae_plugin.cli.publishing import worst_summary
    from facemae_plugin.protocol.verdicts import worst_columns

    figures = [{"pixels_instance_rank1": 0.9, "instance_rank1": 0.04, "verbatim_instance_rank1": 0.2,
                "pixels_reid_rank1": 0.1, "reid_rank1": 0.6},
               {"pixels_instance_rank1": 0.3, "instance_rank1": 0.05, "verbatim_instance_rank1": 0.7,
                "pixels_reid_rank1": 0.1, "reid_rank1": 0.5}]
    rows = []
    for seed, leak in enumerate(figures):
        base = {"variant": "blur s16", "method": "blur", "seed": seed, "accuracy": 0.8, "error": 0.2, **leak}
        rows.append({**base, **worst_columns(base)})
    (entry,) = aggregate(rows)
    line = worst_summary(entry, rows)
    assert line["worst_instance_rank1"] == pytest.approx((0.9 + 0.7) / 2)  # not the teacher's 4-5%
    assert line["worst_instance_attacker"] == "pixels/verbatim" and line["worst_reid_attacker"] == "teacher"
