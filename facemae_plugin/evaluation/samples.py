"""Sample sheets: the same records of several shards side by side, one row per shard."""
import numpy as np

from ..formats.shard import FaceShard
from .plots import new_figure, save_figure


def spread_keys(shard_dir, count):
    """``count`` image keys spread evenly over a shard (so over its identities)."""
    with FaceShard(shard_dir) as shard:
        keys = shard.image_keys
        picks = np.linspace(0, len(keys) - 1, num=min(count, len(keys))).round().astype(int)
        return [int(keys[i]) for i in picks]


def save_release_samples(path, sources, keys):
    """One row per released set (``[(label, shard_dir)]``), one column per record key: the same faces."""
    label_width = 2.3  # inches for row labels such as "FaceMAE no-IRM full 0.75"
    width = 1.1 * len(keys) + label_width
    figure = new_figure(width, 1.15 * len(sources) + 0.3)
    for r, (label, shard_dir) in enumerate(sources):
        with FaceShard(shard_dir) as shard:
            for c, key in enumerate(keys):
                axes = figure.add_subplot(len(sources), len(keys), r * len(keys) + c + 1)
                axes.imshow(shard.decode(key))
                axes.set_xticks([])
                axes.set_yticks([])
                if c == 0:
                    axes.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    figure.subplots_adjust(left=(label_width - 0.1) / width, right=0.99, top=0.98, bottom=0.02,
                           wspace=0.04, hspace=0.04)
    return save_figure(figure, path)
