#!/usr/bin/env python
"""Pairs list (path_a path_b 0|1) -> verification .bin (same as `facemae pairs2bin`)."""
from facemae_plugin.cli import run_as_script

if __name__ == "__main__":
    run_as_script("pairs2bin")
