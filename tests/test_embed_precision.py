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
    monkeypatch.setattr(embed, "fast_dtype", lambda device: native)
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


def test_a_long_job_runs_the_compiled_graph_and_keeps_its_embeddings():
    model = SmallNet().eval()
    compiling = embed.CompilingEmbedder(model, embed.TorchCompiler(model), after=8).eval()
    batches = [torch.rand(n, 3, 112, 112) * 2 - 1 for n in (8, 5, 20)]  # compiled, padded, split
    with torch.no_grad():
        with compiling.job(8):  # not more than `after`: eager, bit for bit
            assert torch.equal(compiling(batches[0]), model(batches[0])) and compiling.compiled is None
        with compiling.job(9):
            got = [compiling(b) for b in batches]
        want = [model(b) for b in batches]
        assert torch.equal(compiling(batches[0]), want[0])  # outside a job: eager again
    assert compiling.compiled is not None and not compiling.failed and compiling.batch_size == 8
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.allclose(g, w, atol=1e-5)
    assert list(dict(compiling.named_parameters())) == [f"model.{n}" for n, _ in model.named_parameters()]


def test_a_jobs_embeddings_do_not_depend_on_the_jobs_before_it():
    model = SmallNet().eval()
    compiling = embed.CompilingEmbedder(model, embed.TorchCompiler(model), after=8).eval()
    short, long = torch.rand(4, 3, 112, 112), torch.rand(16, 3, 112, 112)
    with torch.no_grad():
        with embed.embedding_job(compiling, 4):
            before = compiling(short)
        with embed.embedding_job(compiling, 16):
            first = compiling(long)
        with embed.embedding_job(compiling, 4):
            assert torch.equal(compiling(short), before)
        with embed.embedding_job(compiling, 16):
            assert torch.equal(compiling(long), first)


def test_embedding_job_leaves_other_embedders_alone():
    model = SmallNet().eval()
    with embed.embedding_job(model, 10**6) as inside:
        assert inside is model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_openvino_graph_embeds_as_the_torch_model_does(dtype):
    """Oracle: the eager torch model in float32, on the same images."""
    pytest.importorskip("openvino")
    from facemae_plugin.core.devices import native_bf16

    if dtype == torch.bfloat16 and not native_bf16():
        pytest.skip("bf16 inference needs a CPU with avx512_bf16 or amx_bf16")
    model = get_backbone("mbf").eval()
    compiling = embed.CompilingEmbedder(model, embed.OpenVinoCompiler(model, dtype), after=0).eval()
    x = torch.rand(11, 3, 112, 112) * 2 - 1
    with torch.no_grad(), compiling.job(11):
        got, again, alone = compiling(x[:8]), compiling(x[:8]), compiling(x[8:])  # graph for 8; 3 padded
        want = model(x)
    assert got.dtype == torch.float32 and got.shape == (8, 512)
    assert torch.equal(got, again)  # the same batch, the same bytes
    cosine = torch.nn.functional.cosine_similarity(torch.cat([got, alone]), want)
    assert cosine.min() > (0.99999 if dtype == torch.float32 else 0.999)
    if dtype == torch.float32:
        assert torch.allclose(torch.cat([got, alone]), want, rtol=1e-3, atol=1e-4 * want.abs().max().item())


def test_a_cpu_job_compiles_with_openvino_where_it_runs_the_dtype_natively(monkeypatch):
    model = get_backbone("mbf").eval()
    monkeypatch.setattr(embed, "openvino_available", lambda: True)
    monkeypatch.setattr(embed, "native_bf16", lambda: False)
    assert isinstance(embed.pick_compiler(model, model, "cpu", torch.float32), embed.OpenVinoCompiler)
    assert isinstance(embed.pick_compiler(model, model, "cpu", torch.bfloat16), embed.TorchCompiler)
    assert isinstance(embed.pick_compiler(model, model, "cuda", torch.float16), embed.TorchCompiler)
    monkeypatch.setattr(embed, "native_bf16", lambda: True)
    assert embed.pick_compiler(model, model, "cpu", torch.bfloat16).dtype == torch.bfloat16
    monkeypatch.setattr(embed, "openvino_available", lambda: False)
    assert isinstance(embed.pick_compiler(model, model, "cpu", torch.float32), embed.TorchCompiler)


def test_a_compiler_that_fails_leaves_the_model_eager_with_one_line(monkeypatch, capsys):
    def no_compiler(module, **kwargs):
        def run(x):
            raise RuntimeError("no C++ compiler found\nsecond line")
        return run

    monkeypatch.setattr(torch, "compile", no_compiler)
    model = SmallNet().eval()
    compiling = embed.CompilingEmbedder(model, embed.TorchCompiler(model), after=0)
    x = torch.rand(4, 3, 112, 112)
    with torch.no_grad(), compiling.job(8):
        assert torch.equal(compiling(x), model(x)) and torch.equal(compiling(x), model(x))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["facemae: torch.compile failed (RuntimeError: no C++ compiler found); embedding without it"]


def test_load_embedder_compiles_torch_models_unless_told_not_to(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(get_backbone("mbf").state_dict(), path)
    compiling = load_embedder(path, "mbf")
    assert isinstance(compiling, embed.CompilingEmbedder) and compiling.compiler.name in compiling.runtime
    plain = load_embedder(path, "mbf", compile=False)
    assert not isinstance(plain, embed.CompilingEmbedder) and (plain.precision, plain.runtime) == ("fp32", "torch")


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


def every_path(model_path):
    """``{name: embedder}``: the reference (fp32, eager) and each path a long job can take here."""
    paths = {"fp32 eager": load_embedder(model_path, "mbf", precision="fp32", compile=False),
             "fp32": load_embedder(model_path, "mbf", precision="fp32")}
    if embed.fast_dtype("cpu") is not None:
        paths["fast"] = load_embedder(model_path, "mbf", precision="fast")
    return paths


@pytest.mark.slow
def test_fast_verification_is_within_a_tenth_of_a_point_of_fp32(trained):
    bin_path = trained / "synth" / "holdout.bin"  # 300 pairs: 1,200 images with flips, a long job
    paths = every_path(trained / "mbf" / "model.pt")
    reports = {name: verify_bin(embedder, bin_path) for name, embedder in paths.items()}
    reference = reports.pop("fp32 eager")
    for name, report in reports.items():
        assert abs(report["accuracy_flip"] - reference["accuracy_flip"]) <= 0.001, name
        assert report["xnorm"] == pytest.approx(reference["xnorm"], rel=0.01), name


@pytest.mark.slow
def test_fast_audit_rank1_is_within_a_fifth_of_a_point_of_fp32(tmp_path):
    """A seeded random mbf: its embeddings spread like a recogniser's, where the briefly trained one's
    sit within 1e-6 of one another, so that any rounding, fp32 included, reorders them."""
    from facemae_plugin.evaluation.audit import AuditOptions, audit
    from tests.helpers import blurred_copy

    torch.manual_seed(0)
    torch.save(get_backbone("mbf").state_dict(), tmp_path / "mbf.pt")
    make_synthetic_dataset(tmp_path / "faces", identities=25, images_per_identity=20, holdout_identities=2,
                           num_pairs=10, progress=False)  # 500 faces: a fifth of a point is one of them
    blurred_copy(tmp_path / "faces", tmp_path / "blurred", sigma=10)
    reports = {name: audit(tmp_path / "faces", tmp_path / "blurred", embedder, options=AuditOptions(plots=False),
                           out_dir=tmp_path / name.replace(" ", "_"))
               for name, embedder in every_path(tmp_path / "mbf.pt").items()}
    reference = reports.pop("fp32 eager")
    for figure in ("instance_rank1", "identity_rank1"):  # neither all nor none found: rank-1 can move
        assert 0.2 < reference[figure] < 0.9, figure
    for name, report in reports.items():
        assert "openvino" in report["runtime"] or "torch.compile" in report["runtime"]
        for figure in ("instance_rank1", "identity_rank1"):
            assert abs(report[figure] - reference[figure]) <= 0.002 + 1e-9, (name, figure)


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
    expected = "bfloat16" if embed.fast_dtype("cpu") is not None else "fp32"
    done = env_run()
    assert json.loads(done.stdout.strip().splitlines()[-1])["precision"] == expected
    assert f"({expected})" in done.stdout.strip().splitlines()[-2]


def test_the_cli_offers_the_librarys_precisions_and_audits_in_fp32_by_default():
    from facemae_plugin import cli

    assert cli.options.PRECISIONS == embed.PRECISIONS
    parser = cli.build_parser()
    assert parser.parse_args(["verify", "x.bin", "--model", "m.pt"]).precision == "auto"
    assert parser.parse_args(["audit", "--original", "a", "--released", "b", "--model", "m.pt"]).precision == "fp32"
    assert parser.parse_args(["verify", "x.bin", "--model", "m.pt"]).compile is True
    assert parser.parse_args(["verify", "x.bin", "--model", "m.pt", "--no-compile"]).compile is False
