"""Whole shards in and out: every image of a shard replaced by its privatized version.

``keys`` plans the output keys, ``workers`` is the torch-free decode/privatize/encode pipeline,
``layout`` names the files of an output folder, ``job`` runs a conversion and ``merge`` joins
its shards. ``convert`` and ``merge`` are the entry points.
"""
from .job import Conversion, convert  # noqa: F401
from .layout import PROVENANCE_NAME, SHARDS_DIR, ConversionError  # noqa: F401
from .merge import concatenate_records, merge  # noqa: F401
from .settings import ConvertSettings  # noqa: F401
from .workers import default_workers, privatize_batch  # noqa: F401
