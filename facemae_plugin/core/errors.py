"""The plugin's error types: what the command line reports as one line with exit status 2.

Every error the plugin raises for bad input (a file, a record, a key, an option) derives from
``FaceMAEError``. Anything else that escapes a verb is a bug in the plugin and keeps its
traceback. ``FaceMAEError`` is a ``ValueError`` so callers of the library that catch
``ValueError`` keep working.
"""


class FaceMAEError(ValueError):
    """Bad input, named: the message says which file, key or option, and what was expected."""


def interval(low=None, high=None, low_open=False, high_open=False):
    """``[low, high)``-style text for the range an error message expects (a missing end is infinite)."""
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"


class InputError(FaceMAEError):
    """An input file or value the plugin cannot use."""


class OutputError(FaceMAEError):
    """An output the plugin refuses to write: it exists, it is an input, a link, or locked."""


class UsageError(FaceMAEError):
    """A command-line option out of its range or in a combination that cannot work."""


class ConfigError(FaceMAEError):
    """A recipe or protocol config asks for something that does not exist or cannot work."""


class CheckpointError(InputError):
    """A file that is not a loadable checkpoint of the kind asked for."""
