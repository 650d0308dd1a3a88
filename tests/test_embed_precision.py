"""The recogniser's precision in verify and audit: fp32 as before, the fast path close to it.

Oracle: the fp32 path (the plain backbone, as 0.2 ran it) on the same images.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facemae_plugin.config import merge_config
from facemae_plugin.data.synthetic import make_synthetic_dataset
from facemae_plugin.evaluation import embed
from facemae_plugin.evaluation.bin_report import verify_bin
from facemae_plugin.evaluation.embed import MixedPrecisionEmbedder, load_embedder, with_precision
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.train.recognise import train_recogniser

REPO = str(Path(__file__).resolve().parents[1])


def test_fp32_is_the_backbone_itself():
    model = get_backbone("mbf").eval()
    assert with_precision(model, "cpu", "fp32") == (model, "fp32")


@pytest.mark.parametrize("native, expected", [(None, "fp32"), (torch.bfloat16, "bfloat16")])
def test_auto_takes_the_fast_path_only_where_its_dtype_is_native(monkeypatch, native, expected):
    monkeypatch.setattr(embed, "fast_inference_dtype", lambda device: native)
    embedder, name = with_precision(get_backbone("mbf").eval(), "cpu", "auto")
    assert name == expected and isinstance(embedder, MixedPrecisionEmbedder) == (native is not None)


def test_the_fast_path_runs_channels_last_in_bf16_and_returns_float32():
    model = get_backbone("mbf").eval()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    fast, name = with_precision(model, "cpu", "fast")
    out = fast(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert name == "bfloat16" and out.dtype == torch.float32 and out.shape == (2, 512)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    conv_weight = next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.is_autocast_enabled("cpu") is False  # autocast ends with the call


def test_an_unknown_precision_is_refused():
    from facemae_plugin.core.errors import UsageError

    with pytest.raises(UsageError, match="precision must be one of auto, fp32, fast"):
        with_precision(get_backbone("mbf"), "cpu", "half")


class SmallNet(torch.nn.Module):
    """A conv, batch norm, PReLU and a linear head: the layers a compiled recogniser fuses, compiled in seconds."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.BatchNorm2d(8),
                                        torch.nn.PReLU(8), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
        self.head = torch.nn.Linear(128, 16)

    def forward(self, x):  # [N, 3, 112, 112] -> [N, 16]
        return self.head(self.body(x))


def test_a_long_job_switches_to_the_compiled_graph_and_keeps_its_embeddings():
    model = SmallNet().eval()
    compiling = embed.CompilingEmbedder(model, after=8).eval()
    batches = [torch.rand(n, 3, 112, 112) * 2 - 1 for n in (8, 8, 5, 20)]  # eager, compiled, padded, split
    with torch.no_grad():
        got = [compiling(b) for b in batches]
        want = [model(b) for b in batches]
    assert compiling.compiled is not None and not compiling.failed and compiling.batch_size == 8
    assert torch.equal(got[0], want[0])  # the first `after` images ran eagerly
    for g, w in zip(got[1:], want[1:]):
        assert g.shape == w.shape and torch.allclose(g, w, atol=1e-5)
    assert list(dict(compiling.named_parameters())) == [f"model.{n}" for n, _ in model.named_parameters()]


def test_a_compiler_that_fails_leaves_the_model_eager_with_one_line(monkeypatch, capsys):
    def no_compiler(module, **kwargs):
        def run(x):
            raise RuntimeError("no C++ compiler found\nsecond line")
        return run

    monkeypatch.setattr(torch, "compile", no_compiler)
    model = SmallNet().eval()
    compiling = embed.CompilingEmbedder(model, after=0)
    x = torch.rand(4, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(compiling(x), model(x)) and torch.equal(compiling(x), model(x))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["facemae: torch.compile failed (RuntimeError: no C++ compiler found); embedding without it"]


def test_load_embedder_compiles_torch_models_unless_told_not_to(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(get_backbone("mbf").state_dict(), path)
    assert isinstance(load_embedder(path, "mbf"), embed.CompilingEmbedder)
    plain = load_embedder(path, "mbf", compile=False)
    assert not isinstance(plain, embed.CompilingEmbedder) and plain.precision == "fp32"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An mbf trained briefly on synthetic faces, its training shard and a 300-pair held-out .bin."""
    root = tmp_path_factory.mktemp("precision")
    make_synthetic_dataset(root / "synth", identities=20, images_per_identity=10, holdout_identities=20,
                           num_pairs=300, progress=False)
    cfg = merge_config({"network": "mbf", "rec": str(root / "synth"), "num_classes": 20, "batch_size": 32,
                        "num_epoch": 2, "num_workers": 0, "output": str(root / "mbf"),
                        "margin_list": (1.0, 0.0, 0.4), "lr": 0.1, "val_targets": []})
    train_recogniser(cfg, device="cpu", progress=False)
    return root


@pytest.mark.slow
def test_fast_verification_is_within_a_tenth_of_a_point_of_fp32(trained):
    model = trained / "mbf" / "model.pt"
    reports = {p: verify_bin(load_embedder(model, "mbf", precision=p), trained / "synth" / "holdout.bin")
               for p in ("fp32", "fast")}
    assert abs(reports["fast"]["accuracy_flip"] - reports["fp32"]["accuracy_flip"]) <= 0.001
    plain = {p: r["xnorm"] for p, r in reports.items()}
    assert plain["fast"] == pytest.approx(plain["fp32"], rel=0.01)


def test_cli_verify_says_which_precision_ran(tmp_path):
    make_synthetic_dataset(tmp_path / "s", identities=2, images_per_identity=2, holdout_identities=4, num_pairs=10,
                           progress=False)
    torch.manual_seed(0)
    torch.save(get_backbone("mbf").state_dict(), tmp_path / "mbf.pt")
    env_run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "facemae_plugin.cli", "verify", str(tmp_path / "s" / "holdout.bin"), "--model",
         str(tmp_path / "mbf.pt"), "--network", "mbf", "--quiet", "--json", *extra],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    done = env_run("--precision", "fp32")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["precision"] == "fp32"
    expected = "bfloat16" if embed.fast_inference_dtype("cpu") is not None else "fp32"
    done = env_run()
    assert json.loads(done.stdout.strip().splitlines()[-1])["precision"] == expected
    assert f"({expected})" in done.stdout.strip().splitlines()[-2]


def test_the_cli_offers_the_librarys_precisions_and_audits_in_fp32_by_default():
    from facemae_plugin import cli

    assert cli.PRECISIONS == embed.PRECISIONS
    parser = cli.build_parser()
    assert parser.parse_args(["verify", "x.bin", "--model", "m.pt"]).precision == "auto"
    assert parser.parse_args(["audit", "--original", "a", "--released", "b", "--model", "m.pt"]).precision == "fp32"
    assert parser.parse_args(["verify", "x.bin", "--model", "m.pt"]).compile is True
    assert parser.parse_args(["verify", "x.bin", "--model", "m.pt", "--no-compile"]).compile is False
