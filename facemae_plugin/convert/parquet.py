"""InsightFace shards as Parquet and back: the layout the Hugging Face Hub and ``datasets`` read.

``rec_to_parquet``: a shard -> ``OUT/train-IIIII-of-NNNNN.parquet``, one row per image record in
file order:

* ``image``  struct<bytes, path>: the payload as stored (``datasets``' ``Image`` feature), path null
* ``label``  int64: the identity
* ``key``    int64: the record key
* ``recordio_header`` binary: the record's bytes before its payload (IRHeader and any array label)

and, for layout A, ``OUT/recordio-layout.parquet`` with the header and identity records, so that
``parquet_to_rec`` gives back every record byte for byte. Any other Parquet set with an image column
(a struct with ``bytes`` or plain binary) and an integer label column becomes a layout-B shard: keys
0.. in row order, each record ``IRHeader(0, label, key, 0)`` + the image bytes (RecBuilder's records).

Both stream a row group at a time and resume after a kill: finished Parquet files are kept, and
finished parts of a shard (``OUT/parts/``) are joined once all are done.
"""
import glob
import io
import json
import os
import shutil

import numpy as np
from PIL import Image
from tqdm import tqdm

from .layout import read_json_or_none, remove_files
from .merge import concatenate_records
from ..core.errors import InputError, OutputError
from ..core.files import OutputLock, atomic_path, json_text, refuse_link, refuse_overlap, write_bytes
from ..formats.recordio import IRHeader, RecordWriter, pack, unpack
from ..formats.shard import (IDX_NAME, MAX_IMAGE_SIDE, MAX_LABEL, REC_NAME, FaceShard, refuse_shard_output,
                             scalar_label, write_property)

FORMAT = "facemae-parquet"
FORMAT_VERSION = 1
SPLIT = "train"
SPLIT_GLOB = f"{SPLIT}-*.parquet"  # the split's files (``parquet_file_name``), never the layout file
LAYOUT_NAME = "recordio-layout.parquet"
ROWS_PER_GROUP = 500  # rows read and written at a time: bounds memory, and the Hub viewer pages by row group
DEFAULT_ROWS_PER_FILE = 50_000  # 112x112 faces per file: under the Hub's advised size for one Parquet file
PARTS_DIR = "parts"
HUB_FEATURES = {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"},
                "key": {"dtype": "int64", "_type": "Value"},
                "recordio_header": {"dtype": "binary", "_type": "Value"}}


def pyarrow_modules():
    """``(pyarrow, pyarrow.parquet)``, or one line saying how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise InputError("Parquet needs pyarrow: pip install 'facemae-plugin[hub]'") from None
    return pyarrow, pyarrow.parquet


def parquet_file_name(index, count):
    """``train-IIIII-of-NNNNN.parquet``: the Hub's split-file naming, so the split is found by name."""
    return f"{SPLIT}-{index:05d}-of-{count:05d}.parquet"


def _schema(pa, job):
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [("image", image), ("label", pa.int64()), ("key", pa.int64()), ("recordio_header", pa.binary())]
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": HUB_FEATURES}}),
                                       FORMAT: json_text(job)})


# ---------------------------------------------------------------- shard -> Parquet


def rec_to_parquet(rec_dir, out_dir, rows_per_file=DEFAULT_ROWS_PER_FILE, overwrite=False, progress=True):
    """Write a shard's image records as Parquet files in ``out_dir``; returns counts and file names."""
    pyarrow_modules()
    out_dir = os.path.abspath(os.fspath(out_dir))
    with FaceShard(rec_dir) as shard:
        refuse_overlap(out_dir, [shard.directory, shard.rec_path], output_is_dir=True)
        refuse_link(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        with OutputLock(out_dir):
            return write_parquet_files(shard, out_dir, rows_per_file, overwrite, progress)


def write_parquet_files(shard, out_dir, rows_per_file=DEFAULT_ROWS_PER_FILE, overwrite=False, progress=True):
    """``rec_to_parquet``'s work on an open shard into an existing folder the caller holds."""
    pa, pq = pyarrow_modules()
    if int(rows_per_file) < 1:
        raise InputError(f"--rows-per-file must be >= 1, got {rows_per_file}")
    rows_per_file = int(rows_per_file)
    keys = _image_keys_in_file_order(shard)  # [N]
    count = max(1, -(-len(keys) // rows_per_file))
    job = {"format": FORMAT, "version": FORMAT_VERSION, "source": shard.fingerprint(),
           "property": list(shard.property) if shard.property else None, "layout": shard.layout,
           "rows_per_file": rows_per_file, "files": count, "images": len(keys)}
    names = [parquet_file_name(i, count) for i in range(count)]
    _clear_stale(pq, out_dir, names, job, overwrite)
    with tqdm(total=len(keys), desc="rec2parquet", unit="img", disable=not progress) as bar:
        for i, name in enumerate(names):
            rows = keys[i * rows_per_file:(i + 1) * rows_per_file]
            path = os.path.join(out_dir, name)
            if _file_job(pq, path) != dict(job, file=i):
                with atomic_path(path) as tmp:
                    _write_image_file(pa, pq, shard, rows, tmp, dict(job, file=i), bar)
            else:
                bar.update(len(rows))
    if shard.layout == "A":
        with atomic_path(os.path.join(out_dir, LAYOUT_NAME)) as tmp:
            _write_layout_file(pa, pq, shard, keys, tmp, job)
        names.append(LAYOUT_NAME)
    return {"out_dir": out_dir, "images": len(keys), "files": names, "layout": shard.layout}


def _image_keys_in_file_order(shard):
    keys = np.asarray(shard.image_keys, dtype=np.int64)  # [N]
    return keys[np.argsort(shard.reader.index.offsets_of(keys), kind="stable")]


def _file_job(pq, path):
    """The job a Parquet file of ours was written for, or None (absent, unreadable or not ours)."""
    if not os.path.isfile(path):
        return None
    try:
        schema = pq.read_schema(path)
    except Exception:  # any damage means "not a finished file of this job": it is written again
        return None
    return _schema_job(schema)


def _clear_stale(pq, out_dir, names, job, overwrite):
    """Files of another conversion in ``out_dir`` block this one unless ``overwrite`` removes them."""
    ours = set(names) | {LAYOUT_NAME}
    present = sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(out_dir), "*.parquet")))
    for name in present:
        path = os.path.join(out_dir, name)
        if name in ours and _same_conversion(_file_job(pq, path), job):
            continue
        if not overwrite:
            raise OutputError(f"{path}: a Parquet file of another conversion; pass --overwrite to replace it")
        os.remove(path)


def _write_image_file(pa, pq, shard, keys, path, job, bar):
    schema = _schema(pa, job)
    with pq.ParquetWriter(path, schema, compression="none") as writer:  # JPEG bytes do not compress
        for start in range(0, len(keys), ROWS_PER_GROUP):
            columns = _image_columns(shard, keys[start:start + ROWS_PER_GROUP])
            writer.write_table(pa.table(columns, schema=schema), row_group_size=ROWS_PER_GROUP)
            bar.update(len(columns["key"]))


def _image_columns(shard, keys):
    images, labels, headers = [], [], []
    for key in keys:
        record = shard.reader.read_idx(int(key))
        header, payload = unpack(record, where=f"{shard.rec_path} key {key}")
        images.append({"bytes": payload, "path": None})
        labels.append(scalar_label(header.label, f"{shard.rec_path} key {key}"))
        headers.append(record[:len(record) - len(payload)])
    return {"image": images, "label": labels, "key": [int(k) for k in keys], "recordio_header": headers}


def _write_layout_file(pa, pq, shard, image_keys, path, job):
    """Layout A's header and identity records, and whether each lies before the images in the file."""
    keys = np.concatenate([[0], shard.identity_keys]).astype(np.int64)  # [I + 1]
    offsets = shard.reader.index.offsets_of(keys)
    first_image = int(shard.reader.index.offsets_of(image_keys[:1])[0]) if len(image_keys) else 0
    order = np.argsort(offsets, kind="stable")
    table = pa.table({"key": keys[order], "record": [shard.reader.read_idx(int(k)) for k in keys[order]],
                      "before_images": offsets[order] < first_image},
                     schema=pa.schema([("key", pa.int64()), ("record", pa.binary()), ("before_images", pa.bool_())],
                                      metadata={FORMAT: json_text(job)}))
    pq.write_table(table, path, compression="none")


# ---------------------------------------------------------------- Parquet -> shard


def parquet_inputs(paths):
    """The Parquet files named by ``paths`` (files, folders or glob patterns), sorted within each."""
    found = []
    for given in paths:
        given = os.fspath(given)
        if os.path.isdir(given):
            matches = sorted(p for p in glob.glob(os.path.join(glob.escape(given), "*.parquet"))
                             if os.path.basename(p) != LAYOUT_NAME)
        elif any(ch in given for ch in "*?["):
            matches = sorted(glob.glob(given))
        else:
            matches = [given] if os.path.isfile(given) else []
        if not matches:
            raise InputError(f"{given}: no Parquet file there")
        found += matches
    if len(set(found)) != len(found):
        raise InputError(f"{found[0]}: a Parquet file is named twice in the inputs")
    return found


class ParquetSource:
    """Parquet files read as face records: which columns, whose layout, and where each row's key comes from."""

    def __init__(self, pq, paths, image_column="image", label_column="label"):
        self.paths = paths
        self.files = [_open_parquet(pq, p) for p in paths]
        self.image_column, self.label_column = image_column, label_column
        jobs = [_schema_job(f.schema_arrow) for f in self.files]
        self.job = jobs[0] if all(_same_conversion(j, jobs[0]) for j in jobs) else None
        self.ours = self.job is not None and image_column == "image" and label_column == "label"
        if self.ours and [j["file"] for j in jobs] != list(range(self.job["files"])):
            raise InputError(f"{paths[0]}: is one of {self.job['files']} Parquet files of one shard; name all "
                             f"of them, in order (or the folder)")
        for path, handle in zip(paths, self.files):
            _check_columns(path, handle.schema_arrow, image_column, label_column)
        self.rows = [f.metadata.num_rows for f in self.files]  # [F]
        self.first_row = np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(np.int64)  # [F]

    def fingerprint(self):
        return {"files": [[os.path.basename(p), os.path.getsize(p), r] for p, r in zip(self.paths, self.rows)],
                "image_column": self.image_column, "label_column": self.label_column, "ours": self.ours}

    def batches(self, i):
        """Row groups of file ``i`` as ``(first_row, images [bytes], labels [int], keys, headers)``."""
        columns = [self.image_column, self.label_column] + (["key", "recordio_header"] if self.ours else [])
        row = int(self.first_row[i])
        for batch in self.files[i].iter_batches(batch_size=ROWS_PER_GROUP, columns=columns):
            images = _image_bytes(batch.column(0), self.paths[i], row)
            labels = _labels(batch.column(1), self.paths[i], row)
            if self.ours:
                keys, headers = batch.column(2).to_pylist(), batch.column(3).to_pylist()
            else:
                keys, headers = list(range(row, row + len(images))), [None] * len(images)
            yield row, images, labels, keys, headers
            row += len(images)


def _open_parquet(pq, path):
    try:  # without pre-buffering a reader holds one row group, not the whole file
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())[:120]})") from None


def _schema_job(schema):
    """The job our metadata in ``schema`` names, or None (not a file of ours)."""
    try:
        return json.loads((schema.metadata or {})[FORMAT.encode()])
    except (KeyError, ValueError):
        return None


def _same_conversion(a, b):
    """Whether two files' jobs are one conversion (they differ only in which file each is)."""
    return a is not None and b is not None and {**a, "file": None} == {**b, "file": None}


def _check_columns(path, schema, image_column, label_column):
    import pyarrow as pa

    names = schema.names
    for option, column in (("--image-column", image_column), ("--label-column", label_column)):
        if column not in names:
            raise InputError(f"{path}: no column {column!r} ({option}); its columns are {', '.join(names)}")
    image_type = schema.field(image_column).type
    if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)
            or (pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0)):
        raise InputError(f"{path}: column {image_column!r} is {image_type}, expected image bytes "
                         f"(binary, or a struct with 'bytes' as datasets writes an Image)")
    if not pa.types.is_integer(schema.field(label_column).type):
        raise InputError(f"{path}: column {label_column!r} is {schema.field(label_column).type}, expected integer "
                         f"identity labels (map names to integers first)")


def _image_bytes(column, path, first_row):
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        column = column.field("bytes")
    values = column.to_pylist()
    for offset, value in enumerate(values):
        if not value:
            raise InputError(f"{path}: row {first_row + offset} has no image bytes (a path-only image, or empty)")
    return values


def _labels(column, path, first_row):
    values = column.to_pylist()
    for offset, value in enumerate(values):
        if value is None or not 0 <= value <= MAX_LABEL:
            raise InputError(f"{path}: row {first_row + offset} has label {value!r}, expected 0..{MAX_LABEL}")
    return values


def parquet_to_rec(paths, out_dir, image_column="image", label_column="label", overwrite=False, progress=True):
    """Write a shard from Parquet files (see the module docstring); returns counts."""
    _, pq = pyarrow_modules()
    inputs = parquet_inputs(paths)
    out_dir = os.path.abspath(os.fspath(out_dir))
    refuse_shard_output(out_dir, overwrite, inputs=inputs)
    source = ParquetSource(pq, inputs, image_column, label_column)
    os.makedirs(out_dir, exist_ok=True)
    with OutputLock(out_dir):
        parts = _PartsFolder(os.path.join(out_dir, PARTS_DIR), source.fingerprint())
        parts.clear_others(overwrite)
        summary = _write_parts(source, parts, progress)
        layout = _layout_records(pq, inputs, source) if source.ours else None
        tail = parts.write_layout(layout)
        num_classes, size = _shard_property(source, summary)
        write_property(out_dir, num_classes, size)
        records = concatenate_records([*tail[:1], *parts.all(len(inputs)), *tail[1:]],
                                      os.path.join(out_dir, REC_NAME), os.path.join(out_dir, IDX_NAME))
        shutil.rmtree(parts.folder)
    return {"out_dir": out_dir, "images": summary["images"], "records": records, "identities": num_classes,
            "layout": "A" if layout is not None else "B"}


def _write_parts(source, parts, progress):
    """Each Parquet file -> ``parts/part-I.rec/.idx`` (skipped when done); returns image facts."""
    total = int(sum(source.rows))
    facts = {"images": total, "max_label": -1, "sizes": set()}
    with tqdm(total=total, desc="parquet2rec", unit="img", disable=not progress) as bar:
        for i, path in enumerate(source.paths):
            if not parts.done(i):
                parts.mark_done(i, _write_part(source, i, parts.files(i)[:2], bar))
            else:
                bar.update(source.rows[i])
            facts.update(parts.facts(i, facts))
    return facts


def _write_part(source, i, files, bar):
    """File ``i`` of ``source`` as one shard part; returns its largest label and image sizes."""
    facts = {"max_label": -1, "sizes": set()}
    path = source.paths[i]
    with RecordWriter(*files) as writer:
        for row, images, labels, keys, headers in source.batches(i):
            for offset, (image, label, key, header) in enumerate(zip(images, labels, keys, headers)):
                facts["sizes"].add(_image_size(image, path, row + offset))
                facts["max_label"] = max(facts["max_label"], label)
                writer.write_idx(key, _record(image, label, key, header, path, row + offset))
            bar.update(len(images))
    return facts


def _record(image, label, key, header, path, row):
    """The record of one row: its own header bytes (a file of ours) or RecBuilder's ``IRHeader(0, label, key, 0)``."""
    if header is None:
        return pack(IRHeader(0, float(label), int(key), 0), image)
    record = header + image
    found = scalar_label(unpack(record, where=f"{path} row {row}")[0].label, f"{path} row {row}")
    if found != label:
        raise InputError(f"{path}: row {row} has label {label} but its recordio_header says {found}")
    return record


def _image_size(data, path, row):
    """``(height, width)`` from the image's own header (no decode)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # PIL raises many types for bytes that are no image
        raise InputError(f"{path}: row {row} is not a readable image ({data[:8]!r}...)") from None
    if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise InputError(f"{path}: row {row} is {width}x{height}, expected 1..{MAX_IMAGE_SIDE} pixels a side")
    return height, width


def _layout_records(pq, inputs, source):
    """Layout A's ``(records before the images, records after)`` from ``recordio-layout.parquet``, or None (B)."""
    if source.job.get("layout") != "A":
        return None
    path = os.path.join(os.path.dirname(inputs[0]), LAYOUT_NAME)
    if not _same_conversion(_file_job(pq, path), source.job):
        raise InputError(f"{path}: missing or of another conversion; a layout-A shard needs it beside "
                         f"{os.path.basename(inputs[0])}")
    table = pq.read_table(path)
    keys, records, before = (table.column(n).to_pylist() for n in ("key", "record", "before_images"))
    return ([(k, r) for k, r, b in zip(keys, records, before) if b],
            [(k, r) for k, r, b in zip(keys, records, before) if not b])


def _shard_property(source, facts):
    if len(facts["sizes"]) > 1:
        raise InputError(f"{source.paths[0]}: images of several sizes ({sorted(facts['sizes'])[:3]}); "
                         f"a shard holds aligned faces of one size")
    size = next(iter(facts["sizes"]), (112, 112))
    recorded = source.job.get("property") if source.ours else None
    if recorded:
        return recorded[0], tuple(recorded[1:])
    return facts["max_label"] + 1, size


class _PartsFolder:
    """``OUT/parts/``: one shard part per input file, each done when its marker has this job's fingerprint."""

    def __init__(self, folder, fingerprint):
        self.folder = folder
        self.fingerprint = fingerprint
        refuse_link(folder)
        os.makedirs(folder, exist_ok=True)

    def files(self, i):
        stem = os.path.join(self.folder, f"part-{i}")
        return stem + ".rec", stem + ".idx", stem + ".done.json"

    def all(self, count):
        return [self.files(i)[:2] for i in range(count)]

    def done(self, i):
        marker = read_json_or_none(self.files(i)[2])
        return (marker is not None and marker.get("fingerprint") == self.fingerprint
                and all(os.path.isfile(p) for p in self.files(i)[:2]))

    def mark_done(self, i, facts):
        write_bytes(self.files(i)[2], json_text({"fingerprint": self.fingerprint, "max_label": facts["max_label"],
                                                 "sizes": sorted(facts["sizes"])}).encode())

    def facts(self, i, so_far):
        marker = read_json_or_none(self.files(i)[2])
        return {"max_label": max(so_far["max_label"], marker["max_label"]),
                "sizes": so_far["sizes"] | {tuple(s) for s in marker["sizes"]}}

    def clear_others(self, overwrite):
        markers = sorted(glob.glob(os.path.join(glob.escape(self.folder), "part-*.done.json")))
        stale = [m for m in markers if (read_json_or_none(m) or {}).get("fingerprint") != self.fingerprint]
        if stale and not overwrite:
            raise OutputError(f"{stale[0]}: a part of a conversion from other Parquet files; pass --overwrite "
                              f"to discard it")
        if stale:
            remove_files(os.path.join(self.folder, "part-*"))

    def write_layout(self, layout):
        """Head and tail parts (layout A's header and identity records); ``[]`` for layout B."""
        if layout is None:
            return []
        paths = []
        for name, records in zip(("head", "tail"), layout):
            rec, idx = os.path.join(self.folder, name + ".rec"), os.path.join(self.folder, name + ".idx")
            with RecordWriter(rec, idx) as writer:
                for key, record in records:
                    writer.write_idx(int(key), record)
            paths.append((rec, idx))
        return paths
