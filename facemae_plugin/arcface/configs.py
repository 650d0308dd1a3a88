"""Let arcface_torch's own ``get_config`` load a config file that lives outside its checkout.

``utils.utils_config.get_config(path)`` asserts ``path`` starts with ``configs/`` and imports
``configs.base`` then ``configs.<name>``. ``config_alias`` loads the user's file as the module
``configs.<name>`` and registers it in ``sys.modules`` for as long as the block runs, so
``get_config("configs/<name>.py")`` finds it without a file in the checkout; ``output`` then
defaults to ``work_dirs/<name>`` exactly as for a config inside ``configs/``. On leaving, the
previous ``sys.modules`` entry (if any) comes back.

The plugin's blocks (``facemae``, ``irm``) are checked with the plugin's own rules: unknown keys
and bad choices fail naming the key, and defaults are filled in.
"""
import os
import sys
from contextlib import contextmanager

from ..config import BLOCK_DEFAULTS, ConfigError, exec_config_file, merge_config

ARCFACE_BLOCKS = ("facemae", "irm")  # blocks an arcface_torch config may carry
PLUGIN_ONLY_BLOCKS = tuple(name for name in BLOCK_DEFAULTS if name not in ARCFACE_BLOCKS)


def _load_file_as(path, module_name):
    module = exec_config_file(path, module_name)
    if not isinstance(getattr(module, "config", None), dict):
        raise ConfigError(f"{path}: expected a module-level `config = edict(...)` as in arcface_torch configs")
    return module


@contextmanager
def config_alias(checkout, path):
    """Yield the ``configs/<name>.py`` string under which arcface_torch's get_config finds ``path``."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    name = os.path.splitext(os.path.basename(path))[0]
    module_name = f"configs.{name}"
    checkout.import_module("configs")  # the parent package, from the checkout
    module = _load_file_as(path, module_name)
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    # get_config updates configs.base's edict in place; a fresh base gives each load what a new
    # process would see, not the keys of a config loaded earlier in this one.
    sys.modules.pop("configs.base", None)
    try:
        yield f"configs/{name}.py"
    finally:
        if previous is None:
            sys.modules.pop(module_name, None)
        else:
            sys.modules[module_name] = previous


def load_arcface_config(checkout, path):
    """arcface_torch's ``get_config`` on ``path`` (anywhere), plugin blocks checked and defaulted."""
    get_config = checkout.import_module("utils.utils_config").get_config
    with config_alias(checkout, path) as alias:
        cfg = get_config(alias)
    return check_plugin_blocks(cfg, path)


def check_plugin_blocks(cfg, path):
    """Replace ``cfg.facemae`` / ``cfg.irm`` by checked blocks with defaults; other keys untouched."""
    for name in PLUGIN_ONLY_BLOCKS:
        if name in cfg:
            raise ConfigError(f"{path}: config.{name} is a pretraining block; arcface_torch configs take "
                              f"{' and '.join('config.' + b for b in ARCFACE_BLOCKS)}")
    given = {name: cfg[name] for name in ARCFACE_BLOCKS if cfg.get(name) is not None}
    checked = merge_config(given, path)
    for name in given:
        cfg[name] = checked[name]
    return cfg
