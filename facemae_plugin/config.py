"""Recipe configs in arcface_torch's edict style, checked before any work starts.

A recipe is a Python file defining ``config = edict(...)``. It updates the
defaults below (arcface_torch's ``configs/base.py`` keys plus the plugin's
``facemae``, ``mae`` and ``irm`` blocks). A key nobody reads is an error that
names it: a typo must not silently train the wrong thing.
"""
import difflib
import importlib.util
import math
import numbers
import os

from easydict import EasyDict as edict

from .core.errors import ConfigError, interval

# arcface_torch's base.py keys (same meaning, same defaults) and the dataset keys its configs add.
ARCFACE_DEFAULTS = dict(
    margin_list=(1.0, 0.5, 0.0), network="r50", resume=False, save_all_states=False, output=None,
    embedding_size=512, sample_rate=1.0, interclass_filtering_threshold=0, fp16=False, batch_size=128,
    optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, verbose=2000, frequent=10, dali=False,
    dali_aug=False, gradient_acc=1, seed=2048, num_workers=2, wandb_key="", suffix_run_name=None,
    using_wandb=False, wandb_entity="entity", wandb_project="project", wandb_log_all=True,
    save_artifacts=False, wandb_resume=False, notes="",
    rec=None, num_classes=None, num_image=None, num_epoch=20, warmup_epoch=0, val_targets=[],
)
# Keys the plugin's own loops add to arcface_torch's set.
PLUGIN_DEFAULTS = dict(
    flip=True,  # random horizontal flip, arcface_torch's only training augmentation
)

# Blocks of the plugin. None marks a value the block must be given.
BLOCK_DEFAULTS = {
    # Switches the reconstruction stage on in a recogniser's training.
    "facemae": dict(checkpoint=None, mask_ratio=0.75, output="full", seed=0, stage="batch", autocast=None),
    # The reconstructor a pretraining recipe trains.
    "mae": dict(preset="tiny", patch_size=8, mask_ratio=0.75, output="full", w_mse=1.0, w_visible=1.0,
                clip_grad=1.0, grid_images=8),
    # Instance relation matching against a frozen teacher recogniser.
    "irm": dict(weight=0.0, teacher=None, network="r50", variant="mse", temperature=0.1),
}

CHOICES = {
    ("facemae", "output"): ("full", "paste"),
    ("mae", "output"): ("full", "paste"),
    ("facemae", "stage"): ("batch", "offline"),
    ("irm", "variant"): ("mse", "kl"),
    (None, "optimizer"): ("sgd", "adamw"),
}


# What each value may be, where its default does not say (None) or says too little: a type
# ("int", "number", "str", "bool", "str-list", "margins") and an optional range (low, high[, low_open
# [, high_open]]), None for an unbounded end. Keys without an entry take the type of their default.
VALUE_SPECS = {
    (None, "rec"): ("str", None), (None, "output"): ("str", None), (None, "suffix_run_name"): ("str", None),
    (None, "num_classes"): ("int", (1, None)), (None, "num_image"): ("int", (1, None)),
    (None, "batch_size"): ("int", (1, None)), (None, "num_epoch"): ("int", (1, None)),
    (None, "warmup_epoch"): ("number", (0, None)), (None, "num_workers"): ("int", (0, None)),
    (None, "embedding_size"): ("int", (1, None)), (None, "gradient_acc"): ("int", (1, None)),
    (None, "lr"): ("number", (0, None, True)), (None, "weight_decay"): ("number", (0, None)),
    (None, "momentum"): ("number", (0, None)), (None, "sample_rate"): ("number", (0, 1, True)),
    (None, "verbose"): ("int", (1, None)), (None, "frequent"): ("int", (1, None)),
    (None, "val_targets"): ("str-list", None), (None, "margin_list"): ("margins", None),
    ("facemae", "checkpoint"): ("str", None), ("facemae", "mask_ratio"): ("number", (0, 1, False, True)),
    ("facemae", "autocast"): ("bool", None),
    ("mae", "patch_size"): ("int", (1, None)), ("mae", "mask_ratio"): ("number", (0, 1, False, True)),
    ("mae", "w_mse"): ("number", (0, None)), ("mae", "w_visible"): ("number", (0, None)),
    ("mae", "clip_grad"): ("number", (0, None, True)), ("mae", "grid_images"): ("int", (0, None)),
    ("irm", "weight"): ("number", (0, None)), ("irm", "teacher"): ("str", None),
    ("irm", "temperature"): ("number", (0, None, True)),
}
_TYPE_OF_DEFAULT = {bool: "bool", int: "int", float: "number", str: "str"}


def _type_ok(kind, value):
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind == "str-list":
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if kind == "margins":
        return (isinstance(value, (list, tuple)) and len(value) == 3
                and all(_type_ok("number", v) for v in value))
    return True


def _bounds(bounds):
    """``(low, high[, low_open[, high_open]])`` -> all four."""
    low, high, low_open, high_open = (*bounds, False, False)[:4]
    return low, high, low_open, high_open


def _in_range(value, bounds):
    low, high, low_open, high_open = _bounds(bounds)
    if low is not None and (value < low or (low_open and value == low)):
        return False
    return high is None or not (value > high or (high_open and value == high))


def _check_value(block, key, value, default, path):
    """``config.[block.]key`` has the type (and range) it needs; None is allowed where the default is None."""
    kind, bounds = VALUE_SPECS.get((block, key), (_TYPE_OF_DEFAULT.get(type(default)), None))
    if kind is None or (value is None and default is None):
        return
    name = f"config.{block}.{key}" if block else f"config.{key}"
    expected = {"int": "an integer", "number": "a finite number", "str": "a string", "bool": "True or False",
                "str-list": "a list of strings", "margins": "three numbers (m1, m2, m3)"}[kind]
    if not _type_ok(kind, value):
        raise ConfigError(f"{path}: {name}={value!r} ({type(value).__name__}), expected {expected}")
    if bounds is not None and not _in_range(value, bounds):
        raise ConfigError(f"{path}: {name}={value!r}, expected a value in {interval(*_bounds(bounds))}")


def _check_values(cfg, given, path):
    defaults = {**ARCFACE_DEFAULTS, **PLUGIN_DEFAULTS}
    for key, value in given.items():
        if key in BLOCK_DEFAULTS:
            for leaf, leaf_value in cfg[key].items():
                _check_value(key, leaf, leaf_value, BLOCK_DEFAULTS[key][leaf], path)
        else:
            _check_value(None, key, value, defaults[key], path)


def check_keys(given, known, where, error=ConfigError):
    """Every key of ``given`` is one of ``known``; an unknown one is named, with the closest known key."""
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise error(f"{where}: unknown key {key!r}{hint}; expected one of {', '.join(map(str, known))}")


def _merge_block(name, given, path):
    defaults = BLOCK_DEFAULTS[name]
    if not isinstance(given, dict):
        raise ConfigError(f"{path}: config.{name} must be an edict block, got {type(given).__name__}")
    check_keys(given, defaults, f"{path}: config.{name}")
    return edict({**defaults, **given})


def _check_choices(cfg, path):
    for (block, key), allowed in CHOICES.items():
        section = cfg if block is None else cfg.get(block)
        if section is None:
            continue
        if section[key] not in allowed:
            name = f"config.{block}.{key}" if block else f"config.{key}"
            raise ConfigError(f"{path}: {name}={section[key]!r}, expected one of {', '.join(allowed)}")


def merge_config(given, path="<config>"):
    """Defaults updated by ``given`` (a dict), every key checked; blocks stay absent unless given."""
    known = {**ARCFACE_DEFAULTS, **PLUGIN_DEFAULTS, **{name: None for name in BLOCK_DEFAULTS}}
    check_keys(given, known, path)
    cfg = edict({**ARCFACE_DEFAULTS, **PLUGIN_DEFAULTS})
    for key, value in given.items():
        cfg[key] = _merge_block(key, value, path) if key in BLOCK_DEFAULTS else value
    _check_values(cfg, given, path)
    _check_choices(cfg, path)
    return cfg


def load_config(path):
    """Load a recipe file; ``output`` defaults to ``work_dirs/<recipe name>`` as in arcface_torch."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    name = os.path.splitext(os.path.basename(path))[0]
    module = exec_config_file(path, f"facemae_recipe_{name}")
    if not isinstance(getattr(module, "config", None), dict):
        raise ConfigError(f"{path}: expected a module-level `config = edict(...)`")
    cfg = merge_config(module.config, path)
    if cfg.output is None:
        cfg.output = os.path.join("work_dirs", name)
    cfg.config_path = path
    return cfg


def exec_config_file(path, module_name):
    """Run a Python config file as a module; a file that does not run is a ConfigError naming it.

    Only the error's own line is kept: the file is the user's, its traceback would point into
    the plugin's loader rather than at the mistake.
    """
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:  # the config's own code raised: report it as the config's error
        raise ConfigError(f"{path}: raised {type(exc).__name__} while loading: {exc}") from None
    return module


def require(cfg, keys, path):
    """Fail before training when a key the job needs is unset."""
    for key in keys:
        section, _, leaf = key.rpartition(".")
        holder = cfg[section] if section else cfg
        if holder.get(leaf) is None:
            raise ConfigError(f"{path}: config.{key} must be set")
