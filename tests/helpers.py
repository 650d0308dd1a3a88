"""What several test modules share: the command line in a subprocess, its JSON line, and the small
training configs the training tests run on the ``synth_dir`` shard (``conftest.py``)."""
import json
import subprocess
import sys

from facemae_plugin.config import merge_config

SYNTH_IDENTITIES = 6  # identities of conftest's synth_dir shard


def facemae(*args, check=False, timeout=600, cwd=None, env=None):
    """``facemae ARGS`` in a fresh interpreter; with ``check``, a non-zero exit fails with its stderr."""
    result = subprocess.run([sys.executable, "-m", "facemae_plugin.cli", *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, cwd=cwd, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"facemae {args} failed ({result.returncode}):\n{result.stderr}")
    return result


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def recognition_config(synth_dir, output, **overrides):
    return merge_config({
        "network": "mbf", "embedding_size": 64, "rec": str(synth_dir), "num_classes": SYNTH_IDENTITIES,
        "batch_size": 12, "lr": 0.05, "num_epoch": 1, "num_workers": 0, "val_targets": ["holdout"],
        "output": str(output), "seed": 3, **overrides})


def pretrain_config(synth_dir, output, **overrides):
    return merge_config({
        "rec": str(synth_dir), "batch_size": 12, "lr": 2e-3, "weight_decay": 0.05, "optimizer": "adamw",
        "num_epoch": 2, "num_workers": 0, "output": str(output), "seed": 5, "flip": False,
        "mae": {"preset": "tiny", "mask_ratio": 0.75, "grid_images": 4}, **overrides})
