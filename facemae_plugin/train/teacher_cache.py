"""IRM's frozen teacher on the originals: each record embedded once per orientation, not once per epoch.

IRM compares the teacher's relation graph of a batch's originals with that of their
reconstructions. The originals' side never changes: the teacher is frozen, and a record's original
is the same image every epoch up to its random flip. So the first batch that draws a record embeds
it in every orientation training can draw (stored, and mirrored when flipping), and every later
epoch reads those rows back. A record then costs one teacher forward per orientation in the whole
run instead of one per epoch; that pays only when the run has more epochs than orientations, and
only while the rows fit ``MAX_BYTES``, so ``OriginalEmbeddings.pays`` decides whether a run
keeps one.

The records a batch has not seen before are embedded in a batch of fixed size (the loader's batch
times the orientations, padded with zero images), so a record's row does not depend on which
records were new beside it: a resumed run, whose cache starts empty, computes the same rows.
"""
import torch

# The most memory the cached rows may take (on the training device).
MAX_BYTES = 1 << 30


class OriginalEmbeddings:
    """The teacher's embeddings of the originals, by record key and orientation.

    ``embed(images, keys, flipped) -> [B, D]``: ``images`` [B, 3, H, W] as stored (not yet mirrored),
    ``flipped`` [B] the flips the batch draws; row ``i`` is the teacher's embedding of image ``i`` as
    training sees it (mirrored where ``flipped[i]``).
    """

    def __init__(self, teacher, batch_size, flip, autocast):
        self.teacher, self.autocast = teacher, autocast
        self.orientations = 2 if flip else 1
        self.chunk = batch_size * self.orientations
        self.rows = {}  # record key -> [orientations, D]

    @staticmethod
    def pays(records, epochs, flip, embedding_size):
        """Whether caching beats embedding every batch: more epochs than orientations, and room."""
        orientations = 2 if flip else 1
        return epochs > orientations and records * orientations * embedding_size * 4 <= MAX_BYTES

    def embed(self, images, keys, flipped):  # [B, 3, H, W], [B], [B] -> [B, D]
        keys = [int(key) for key in keys]
        first = {}  # key -> its first row in the batch
        for row, key in enumerate(keys):
            first.setdefault(key, row)
        new = [key for key in first if key not in self.rows]
        if new:
            self._embed_new(images[[first[key] for key in new]], new)
        sides = torch.as_tensor(flipped, dtype=torch.bool).tolist() if self.orientations == 2 else [False] * len(keys)
        return torch.stack([self.rows[key][int(side)] for key, side in zip(keys, sides)])

    @torch.no_grad()
    def _embed_new(self, stored, keys):  # [n, 3, H, W] as stored, their n keys
        views = [stored] if self.orientations == 1 else [stored, stored.flip(-1)]
        batch = torch.cat(views)  # [n * orientations, 3, H, W]
        padded = torch.cat([batch, batch.new_zeros((self.chunk - len(batch), *batch.shape[1:]))])
        with self.autocast():
            embedded = self.teacher(padded)[:len(batch)]  # [n * orientations, D]
        per_view = embedded.view(self.orientations, len(keys), -1)  # [orientations, n, D]
        for i, key in enumerate(keys):
            self.rows[key] = per_view[:, i].clone()  # [orientations, D]
