"""Recipe configs in arcface_torch's edict style, checked before any work starts.

A recipe is a Python file defining ``config = edict(...)``. It updates the
defaults below (arcface_torch's ``configs/base.py`` keys plus the plugin's
``facemae``, ``mae`` and ``irm`` blocks). A key nobody reads is an error that
names it: a typo must not silently train the wrong thing.
"""
import difflib
import importlib.util
import os

from easydict import EasyDict as edict

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
    # Switches the reconstruction stage on in a recogniser's training (DESIGN.md "Config").
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


class ConfigError(ValueError):
    """A recipe asks for something that does not exist or cannot work."""


def _check_keys(given, known, where):
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def _merge_block(name, given, path):
    defaults = BLOCK_DEFAULTS[name]
    if not isinstance(given, dict):
        raise ConfigError(f"{path}: config.{name} must be an edict block, got {type(given).__name__}")
    _check_keys(given, defaults, f"{path}: config.{name}")
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
    _check_keys(given, known, path)
    cfg = edict({**ARCFACE_DEFAULTS, **PLUGIN_DEFAULTS})
    for key, value in given.items():
        cfg[key] = _merge_block(key, value, path) if key in BLOCK_DEFAULTS else value
    _check_choices(cfg, path)
    return cfg


def load_config(path):
    """Load a recipe file; ``output`` defaults to ``work_dirs/<recipe name>`` as in arcface_torch."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"facemae_recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "config", None), dict):
        raise ConfigError(f"{path}: expected a module-level `config = edict(...)`")
    cfg = merge_config(module.config, path)
    if cfg.output is None:
        cfg.output = os.path.join("work_dirs", name)
    cfg.config_path = path
    return cfg


def require(cfg, keys, path):
    """Fail before training when a key the job needs is unset."""
    for key in keys:
        section, _, leaf = key.rpartition(".")
        holder = cfg[section] if section else cfg
        if holder.get(leaf) is None:
            raise ConfigError(f"{path}: config.{key} must be set")
