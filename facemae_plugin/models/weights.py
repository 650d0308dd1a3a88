"""Reading a user's torch file (checkpoint, ``model.pt``, ``resume.pt``): restricted, one-line errors.

``torch.load(weights_only=True)`` refuses anything but tensors and plain containers, so a hostile
pickle cannot run code; every way the file can fail to load becomes a ``CheckpointError`` that
names it. A model checkpoint (``{"model": state_dict, "config": constructor arguments, "step"}``,
FaceMAE's) is read and checked part by part here, before its model is built.
"""
import os
from collections.abc import Mapping

import torch

from ..core.errors import CheckpointError


def load_weights_file(path, what, map_location="cpu"):
    """The object in ``path`` (a ``what``, e.g. "recogniser model.pt"), loaded with weights_only."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # empty, truncated, not a zip or pickle, or types weights_only refuses
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {first_line}); "
                              f"expected a {what}") from None


def is_tensor_dict(value):
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def read_model_checkpoint(path, model_name, known_config_keys):
    """``(config, state, extra, step)`` of a ``model_name`` checkpoint, each malformed part named.

    ``config`` holds the constructor arguments (only ``known_config_keys``), without the ``extra``
    entry (the training recipe), which comes back apart.
    """
    what = f"{model_name} checkpoint"
    checkpoint = load_weights_file(path, what)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, expected a {what} dict with "
                              f"'model' and 'config'")
    if "model" not in checkpoint or "config" not in checkpoint:
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            raise CheckpointError(f"{path}: this looks like a recogniser state_dict, not a {what} (no "
                                  f"'model'/'config' keys)")
        raise CheckpointError(f"{path}: missing 'model' and/or 'config' keys (has "
                              f"{sorted(map(str, checkpoint))[:6]}); expected a {what}")
    if not isinstance(checkpoint["config"], Mapping):
        raise CheckpointError(f"{path}: 'config' is a {type(checkpoint['config']).__name__}, expected the dict "
                              f"of {model_name} constructor arguments")
    config = dict(checkpoint["config"])
    extra = config.pop("extra", {})
    unknown = sorted(set(config) - set(known_config_keys))
    if unknown:
        raise CheckpointError(f"{path}: unknown {model_name} config key(s) {unknown}; expected some of "
                              f"{sorted(known_config_keys)}")
    if not isinstance(checkpoint["model"], Mapping):
        raise CheckpointError(f"{path}: 'model' is a {type(checkpoint['model']).__name__}, expected a state_dict")
    return config, checkpoint["model"], extra, int(checkpoint.get("step", 0))


def block_count(state, prefix):
    """How many ``prefix.<i>.`` blocks a state_dict holds."""
    return len({key[len(prefix):].split(".", 1)[0] for key in state if key.startswith(prefix)})


def check_state_matches(path, expected, found):
    """``found`` has exactly the keys and shapes of the built model's ``expected`` state_dict."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {list(found[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
             if k in found and tuple(found[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape (file vs config) {wrong[:3]}" if wrong else "") if part)
        raise CheckpointError(f"{path}: weights do not match the checkpoint's config: {detail}")


def plain_values(value, where):
    """Deep copy into types torch.load(weights_only=True) accepts; edicts become dicts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain_values(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} holds a {type(value).__name__}; checkpoint config takes only "
                    f"numbers, strings, lists and dicts")
