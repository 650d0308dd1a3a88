#!/usr/bin/env python
"""IMAGE_DIR/<identity>/*.jpg -> InsightFace layout-A shard (same as `facemae folder2rec`)."""
from facemae_plugin.cli import run_as_script

if __name__ == "__main__":
    run_as_script("folder2rec")
