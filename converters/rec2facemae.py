#!/usr/bin/env python
"""Shard -> privatized shard with FaceMAE or a baseline (same as `facemae convert`)."""
from facemae_plugin.cli import run_as_script

if __name__ == "__main__":
    run_as_script("convert")
