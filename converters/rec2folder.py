#!/usr/bin/env python
"""Shard -> OUT_DIR/<label>/<key>.jpg, image bytes unchanged (same as `facemae rec2folder`)."""
from facemae_plugin.cli import run_as_script

if __name__ == "__main__":
    run_as_script("rec2folder")
