"""Recipe configs: arcface_torch's base keys and defaults, plugin blocks, loud failures."""
import os
import re

import pytest

from facemae_plugin.config import ARCFACE_DEFAULTS, ConfigError, load_config, merge_config


def write_recipe(tmp_path, body, name="my_recipe.py"):
    path = tmp_path / name
    path.write_text("from easydict import EasyDict as edict\nconfig = edict()\n" + body)
    return path


def test_recipe_updates_defaults_and_names_its_output(tmp_path):
    cfg = load_config(write_recipe(tmp_path, "config.network = 'mbf'\nconfig.lr = 0.02\n"))
    assert cfg.network == "mbf" and cfg.lr == 0.02
    assert cfg.margin_list == (1.0, 0.5, 0.0) and cfg.embedding_size == 512
    assert cfg.output == os.path.join("work_dirs", "my_recipe")
    assert "facemae" not in cfg and "irm" not in cfg


def test_defaults_equal_arcface_torch_base():
    root = os.environ.get("ARCFACE_TORCH_ROOT")
    if not root:
        pytest.skip("ARCFACE_TORCH_ROOT is not set: no arcface_torch checkout to compare configs/base.py with")
    base = load_config_module(os.path.join(root, "configs", "base.py"))
    for key, value in base.items():
        if key in ("output", "wandb_key", "notes"):
            continue  # a run name and a placeholder, not behaviour
        assert key in ARCFACE_DEFAULTS, key
        assert ARCFACE_DEFAULTS[key] == value, key


def load_config_module(path):
    namespace = {}
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), namespace)  # arcface_torch's own base config
    return namespace["config"]


def test_facemae_block_gets_its_defaults(tmp_path):
    cfg = load_config(write_recipe(tmp_path, "config.facemae = edict(checkpoint='m.pt', mask_ratio=0.5)\n"))
    assert cfg.facemae.checkpoint == "m.pt" and cfg.facemae.mask_ratio == 0.5
    assert cfg.facemae.output == "full" and cfg.facemae.stage == "batch" and cfg.facemae.seed == 0


@pytest.mark.parametrize("body, message", [
    ("config.learning_rate = 0.1\n", "unknown key 'learning_rate'"),
    ("config.netwrok = 'r50'\n", "unknown key 'netwrok' (did you mean 'network'?)"),
    ("config.facemae = edict(checkpoint='m.pt', mask_raito=0.5)\n",
     "config.facemae: unknown key 'mask_raito' (did you mean 'mask_ratio'?)"),
    ("config.irm = edict(variant='cosine')\n", "config.irm.variant='cosine', expected one of mse, kl"),
    ("config.optimizer = 'adam'\n", "config.optimizer='adam', expected one of sgd, adamw"),
    ("config.mae = 3\n", "config.mae must be an edict block"),
])
def test_bad_recipes_fail_naming_the_key(tmp_path, body, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write_recipe(tmp_path, body))


def test_missing_file_and_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.py")
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="expected a module-level `config = edict"):
        load_config(path)


def test_merge_keeps_blocks_independent():
    a = merge_config({"facemae": {"checkpoint": "a.pt"}})
    b = merge_config({"facemae": {"checkpoint": "b.pt"}})
    assert a.facemae.checkpoint == "a.pt" and b.facemae.checkpoint == "b.pt"


SHIPPED_RECIPES = sorted(p for p in os.listdir(os.path.join(os.path.dirname(__file__), "..", "recipes"))
                         if p.endswith(".py"))


@pytest.mark.parametrize("name", SHIPPED_RECIPES)
def test_every_shipped_recipe_loads(name):
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "recipes", name))
    assert cfg.output and (cfg.rec or cfg.get("facemae"))
