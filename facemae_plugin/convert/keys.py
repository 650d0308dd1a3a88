"""Which output key each record gets, and the shards a conversion is cut into.

Keys with k > 1 reconstructions per image (the image at position p of the input's image keys,
reconstruction j; every copy keeps its source's IRHeader, so ``id`` still names the source record):

* layout A: image key ``1 + p*k + j``, so an identity's images stay contiguous; identity
  record i moves to ``a' + i`` with ``a' = 1 + (a-1)*k`` and range ``[1 + (s-1)*k, 1 + (e-1)*k)``;
  the header becomes ``[a', a' + identities)``. With k = 1 every key is unchanged.
* layout B: j = 0 keeps the source key; j >= 1 gets ``max_key + 1 + p*(k-1) + (j-1)``.

Shards: the image keys are cut into ``num_shards`` contiguous ranges *on batch boundaries*, so a
record is always computed in the same batch whatever the shard count, and 1 shard or 4 give the
same bytes.
"""
from ..formats.recordio import IRHeader, pack, unpack

MAX_FLOAT32_KEY = 1 << 24  # identity ranges are float32 labels: exact integers only up to 2**24


class KeyPlan:
    """Input image keys and the output key of reconstruction j of the image at position p."""

    def __init__(self, shard, k):
        self.layout = shard.layout
        self.image_keys = shard.image_keys  # [N] int64, the order images are converted in
        self.k = int(k)
        self.max_key = shard.reader.index.max_key

    def __len__(self):
        return len(self.image_keys)

    def output_key(self, p, j):
        if self.layout == "A":
            return 1 + p * self.k + j  # image keys are 1..a-1, so the source key is p + 1
        if j == 0:
            return int(self.image_keys[p])
        return self.max_key + 1 + p * (self.k - 1) + (j - 1)

    def output_keys(self, first, count):
        """Keys of the records written for positions first..first+count-1, record-major."""
        return [self.output_key(p, j) for p in range(first, first + count) for j in range(self.k)]


def shard_range(num_images, batch_size, num_shards, shard):
    """``[start, end)`` image positions of shard ``shard`` of ``num_shards``, on batch boundaries."""
    num_batches = -(-num_images // batch_size)
    first = shard * num_batches // num_shards
    last = (shard + 1) * num_batches // num_shards
    return first * batch_size, min(last * batch_size, num_images)


KEY_SCHEME = {
    "A": "image p (0-based among keys 1..a-1), reconstruction j -> key 1 + p*k + j; identity i -> "
         "1 + (a-1)*k + i with range [1 + (s-1)*k, 1 + (e-1)*k); header [1 + (a-1)*k, that + identities)",
    "B": "reconstruction 0 keeps the source key; reconstruction j >= 1 of image p (idx order) -> "
         "max_key + 1 + p*(k-1) + (j-1)",
}


def tail_records(shard, k):
    """``(key, record)`` of layout A's identity records then header record, remapped for k copies."""
    if shard.layout != "A":
        return []
    first_identity, end = shard.header_range
    new_first = 1 + (first_identity - 1) * k
    records = []
    ranges = shard.identity_ranges() if k > 1 else {}
    for i, key in enumerate(shard.identity_keys.tolist()):
        record = shard.reader.read_idx(key)
        if k > 1:
            header, payload = unpack(record, f"{shard.rec_path} key {key}")
            start, stop = ranges[i]
            record = pack(IRHeader(0, [1 + (start - 1) * k, 1 + (stop - 1) * k], header.id, header.id2), payload)
        records.append((new_first + i if k > 1 else key, record))
    record = shard.reader.read_idx(0)
    if k > 1:
        header, payload = unpack(record, f"{shard.rec_path} key 0")
        record = pack(IRHeader(0, [new_first, new_first + end - first_identity], header.id, header.id2), payload)
    records.append((0, record))
    return records
