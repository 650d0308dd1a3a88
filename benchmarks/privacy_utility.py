"""The privacy-utility table: ``facemae benchmark`` under its older name.

    python benchmarks/privacy_utility.py benchmarks/configs/privacy_utility_synth.py

Takes the same arguments as ``facemae benchmark`` (see ``facemae benchmark --help``) and prints a
JSON line last, like every benchmark here.
"""
import sys

from facemae_plugin.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:], "--json"]))
