"""The adaptive attacker: a recogniser trained on faces beside their release by the method under audit.

Recognisers trained on obfuscated faces defeat blur and pixelation (McPherson, Shokri and Shmatikov
2016, "Defeating Image Obfuscation with Deep Learning"). This attacker holds a training set of other
people, privatizes it with the published method and parameters (a seed of its own: it cannot know a
secret one), and trains the recogniser recipe on each original beside its privatized twin under one
label, so it learns to match a privatized face to its source. ``facemae release --training-set``
and the benchmark (split A) train one each from random weights; ``facemae release
--adaptive-from-attackers`` also fine-tunes each recogniser it was given the same way.
"""
import os
import shutil

from ..formats.shard import FaceShard
from ..data.split import write_beside_release
from .reapply import with_own_seed

ADAPTIVE = "adaptive"  # its name in the suite and on the card
ADAPTIVE_DIR = ".adaptive"  # its training data and model while the release is audited; removed before the card
# What `facemae release` trains: the benchmark's recogniser recipe (CosFace margins, which converge
# on a few hundred identities), on the training set and its release.
RECIPE = {"network": "mbf", "embedding_size": 512, "margin_list": (1.0, 0.0, 0.4), "batch_size": 64, "lr": 0.1,
          "num_epoch": 3, "warmup_epoch": 1, "seed": 2048, "fp16": True, "num_workers": 2}


def beside_release(training_set, folder, privatizer, settings, progress=False):
    """``folder/train``: every face of ``training_set`` then its release by ``privatizer`` (a seed of its
    own), under the same label, converted with ``settings`` (``ConvertSettings``); returns that shard's
    path. ``folder`` is the attacker's own."""
    from ..convert import convert

    shutil.rmtree(folder, ignore_errors=True)
    released = os.path.join(folder, "released")
    convert(training_set, released, with_own_seed(privatizer), settings, progress=progress)
    pairs = os.path.join(folder, "train")
    with FaceShard(training_set) as original, FaceShard(released) as twin:
        write_beside_release(original, twin, pairs)
    return pairs


def train_adaptive_attackers(training_set, folder, privatizer, settings, device, progress, starts=(None,),
                             recipe=None):
    """Train one adaptive attacker in ``folder`` per entry of ``starts``, all on the same pairs: None trains
    the recipe from random weights, ``(model.pt, network)`` fine-tunes that recogniser instead (an attacker
    who holds a face recogniser adapts it to the method). Returns their ``(model.pt, network)``, in order."""
    recipe = {**RECIPE, **(recipe or {})}
    pairs = beside_release(training_set, folder, privatizer, settings)
    return [_train_on_pairs(pairs, os.path.join(folder, f"recogniser-{i}"), recipe, start, device, progress)
            for i, start in enumerate(starts)]


def _train_on_pairs(pairs, output, recipe, start, device, progress):
    from ..config import merge_config
    from ..models.backbones import stored_embedding_size
    from ..train.recognise import train_recogniser

    model, network = start or (None, recipe["network"])
    width = recipe["embedding_size"] if model is None else stored_embedding_size(model, network)
    with FaceShard(pairs) as shard:
        num_classes, images = shard.fingerprint()["identities"], len(shard)  # layout A: one identity record each
    cfg = merge_config({**recipe, "network": network, "embedding_size": width, "rec": pairs,
                        "num_classes": num_classes, "val_targets": [],
                        "batch_size": min(recipe["batch_size"], images),  # a small set still trains
                        "output": output})
    return train_recogniser(cfg, device=device, progress=progress, start=model)["model"], network
