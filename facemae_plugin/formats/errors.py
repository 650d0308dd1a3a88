"""The error of the RecordIO layer, shared by the record and index readers."""
from ..core.errors import FaceMAEError


class RecordIOError(FaceMAEError):
    """A .rec/.idx file does not hold what the format promises; the message names where."""
