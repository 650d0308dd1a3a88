"""IRM's teacher embeddings of the originals, kept across epochs: the rows are the teacher's own
embeddings, each record is embedded once per orientation, and pretraining with the cache trains as
without it and resumes to the same bytes."""
import pytest
import torch

from facemae_plugin.core.devices import autocast
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.train import teacher_cache
from facemae_plugin.train.pretrain import pretrain
from facemae_plugin.train.recognise import train_recogniser
from facemae_plugin.train.teacher_cache import OriginalEmbeddings

from .helpers import pretrain_config, recognition_config


def small_teacher():
    torch.manual_seed(0)
    return get_backbone("mbf", 16).eval()


def counting(teacher):
    """``teacher`` with a list of the batch sizes it embedded without gradients (the originals' side)."""
    sizes = []
    teacher.register_forward_hook(lambda module, args, out: sizes.append(len(args[0]))
                                  if not torch.is_grad_enabled() else None)
    return teacher, sizes


def test_rows_are_the_teachers_embeddings_of_each_image_as_training_sees_it():
    teacher, sizes = counting(small_teacher())
    cache = OriginalEmbeddings(teacher, batch_size=4, flip=True, autocast=lambda: autocast("cpu", False))
    images = torch.rand(6, 3, 112, 112) * 2 - 1
    flipped = torch.tensor([True, False, True, True, False, False])
    with torch.no_grad():  # the oracle: the teacher on each image as drawn, and drawn the other way
        expected = teacher(torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images))  # [6, D]
        expected_other_way = teacher(torch.where(flipped.view(-1, 1, 1, 1), images, images.flip(-1)))
    sizes.clear()
    first = cache.embed(images[:4], [10, 11, 12, 13], flipped[:4])
    assert torch.allclose(first, expected[:4], atol=1e-5)
    assert sizes == [8]  # the four new records, both orientations, one fixed-size batch
    # two seen records drawn the other way round, two new ones: only the new ones are embedded
    again = cache.embed(images[2:6], [12, 13, 14, 15], ~flipped[2:6])
    assert torch.allclose(again, expected_other_way[2:6], atol=1e-5)
    assert sizes == [8, 8]
    cache.embed(images[:4], [10, 11, 12, 13], flipped[:4])
    assert sizes == [8, 8]  # all seen: no forward at all


def test_a_records_row_does_not_depend_on_the_records_new_beside_it():
    teacher = small_teacher()
    images = torch.rand(5, 3, 112, 112) * 2 - 1
    alone = OriginalEmbeddings(teacher, 4, False, lambda: autocast("cpu", False)).embed(images[:1], [7], [False])
    crowd = OriginalEmbeddings(teacher, 4, False, lambda: autocast("cpu", False))
    beside = crowd.embed(images[[1, 0, 2]], [8, 7, 9], [False] * 3)
    assert torch.equal(alone[0], beside[1])


def test_the_cache_is_kept_only_where_it_saves_forwards_and_fits():
    assert not OriginalEmbeddings.pays(1000, 2, flip=True, embedding_size=512)
    assert OriginalEmbeddings.pays(1000, 3, flip=True, embedding_size=512)
    assert OriginalEmbeddings.pays(1000, 2, flip=False, embedding_size=512)
    too_many = teacher_cache.MAX_BYTES // (2 * 512 * 4) + 1
    assert not OriginalEmbeddings.pays(too_many, 10, flip=True, embedding_size=512)


@pytest.fixture(scope="module")
def teacher_path(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train_recogniser(recognition_config(synth_dir, out, val_targets=[]), device="cpu", progress=False,
                     compile=False)
    return str(out / "model.pt")


def irm_config(synth_dir, teacher_path, output, **overrides):
    return pretrain_config(synth_dir, output, num_epoch=3, flip=True,
                           irm={"weight": 1.0, "teacher": teacher_path, "network": "mbf"}, **overrides)


def test_pretraining_with_the_cache_trains_as_without_it_and_embeds_each_original_twice(
        synth_dir, teacher_path, tmp_path, monkeypatch):
    calls = []
    real = OriginalEmbeddings._embed_new
    monkeypatch.setattr(OriginalEmbeddings, "_embed_new",
                        lambda self, stored, keys: (calls.append(len(keys)), real(self, stored, keys)))
    cached = pretrain(irm_config(synth_dir, teacher_path, tmp_path / "cached"), device="cpu", progress=False)
    assert sum(calls) == 36  # every record once (in both orientations), over three epochs
    monkeypatch.setattr(teacher_cache, "MAX_BYTES", 0)
    plain = pretrain(irm_config(synth_dir, teacher_path, tmp_path / "plain"), device="cpu", progress=False)
    assert sum(calls) == 36  # no cache: nothing more went through it
    first_cached, first_plain = cached["epochs"][0]["parts"][0], plain["epochs"][0]["parts"][0]
    assert first_cached["irm"] == pytest.approx(first_plain["irm"], rel=1e-4)
    assert first_cached["mse"] == first_plain["mse"]  # the same images, masks and weights
    assert cached["epochs"][-1]["loss"] == pytest.approx(plain["epochs"][-1]["loss"], rel=1e-2)


def test_a_resumed_run_with_an_empty_cache_gives_the_same_bytes(synth_dir, teacher_path, tmp_path):
    pretrain(irm_config(synth_dir, teacher_path, tmp_path / "straight"), device="cpu", progress=False)
    pretrain(irm_config(synth_dir, teacher_path, tmp_path / "resumed"), device="cpu", progress=False, max_steps=3)
    pretrain(irm_config(synth_dir, teacher_path, tmp_path / "resumed"), device="cpu", progress=False, resume=True)
    a = torch.load(tmp_path / "straight" / "facemae.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "facemae.pt", weights_only=True)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
