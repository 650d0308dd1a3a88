"""How a conversion encodes and batches, as one checked value: never what it releases."""
from dataclasses import dataclass
from typing import Optional

from .layout import ConversionError


@dataclass(frozen=True)
class ConvertSettings:
    """JPEG ``quality`` (0..100), images per ``batch_size``, decode/encode ``workers`` (0: in the
    converting process; None: ``workers.default_workers()``)."""

    quality: int = 95
    batch_size: int = 64
    workers: Optional[int] = None

    def __post_init__(self):
        if not 0 <= int(self.quality) <= 100:
            raise ConversionError(f"JPEG quality must be in 0..100, got {self.quality}")
        if int(self.batch_size) < 1:
            raise ConversionError(f"batch size must be >= 1, got {self.batch_size}")
        if self.workers is not None and int(self.workers) < 0:
            raise ConversionError(f"workers must be >= 0 (0 = decode/encode in this process), got {self.workers}")
