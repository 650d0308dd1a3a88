"""A small working directory of every kind of file the CLI reads, for the bad-input tests.

``build_workspace(root)`` writes, with the plugin's own writers:

- ``ds/``: a layout-A shard, 4 identities x 3 images; ``released/``: its blur release (convert)
- ``val.bin``: 12 pairs of ``ds`` images; ``faces/<a|b>/*.jpg`` and ``pairs.txt`` over them
- ``mbf.pt``: a MobileFaceNet state_dict; ``mae.pt``: a FaceMAE tiny checkpoint
"""
import hashlib
import os

import cv2
import torch

from facemae_plugin.formats.binfile import write_bin
from facemae_plugin.convert import convert
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.models.mae import create_facemae
from facemae_plugin.privatizers.methods import make_privatizer
from facemae_plugin.formats.recordio import encode_image
from tests.helpers import IN_PROCESS
from tests.conftest import write_layout_a

IDENTITY_SIZES = [3, 3, 3, 3]


def build_workspace(root):
    root = str(root)
    groups = write_layout_a(os.path.join(root, "ds"), IDENTITY_SIZES, seed=0)
    images = [encode_image(img, 95) for group in groups for img in group]
    pairs = [(images[i], images[(i + 1) % len(images)]) for i in range(12)]
    write_bin(os.path.join(root, "val.bin"), [img for pair in pairs for img in pair],
              [i % 2 == 0 for i in range(12)])
    for identity, group in zip("ab", groups):
        os.makedirs(os.path.join(root, "faces", identity))
        for i, img in enumerate(group[:2]):
            cv2.imwrite(os.path.join(root, "faces", identity, f"{i}.jpg"), img)
    with open(os.path.join(root, "pairs.txt"), "w") as f:
        f.write("faces/a/0.jpg faces/a/1.jpg 1\nfaces/a/0.jpg faces/b/0.jpg 0\n")
    torch.manual_seed(0)
    torch.save(get_backbone("mbf").state_dict(), os.path.join(root, "mbf.pt"))
    create_facemae("tiny", patch_size=8).save_checkpoint(os.path.join(root, "mae.pt"))
    convert(os.path.join(root, "ds"), os.path.join(root, "released"), make_privatizer("blur", sigma=3.0), IN_PROCESS,
            progress=False)
    return root


def snapshot(root):
    """``{relative path: sha256}`` of every file under ``root`` (links are listed, not followed)."""
    digests = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                digests[rel] = "link:" + os.readlink(path)
            else:
                with open(path, "rb") as f:
                    digests[rel] = hashlib.sha256(f.read()).hexdigest()
    return digests
