"""Regenerate arcface_backbone_keys.json from a real arcface_torch checkout.

Usage:  ARCFACE_TORCH_ROOT=/path/to/arcface_torch python tests/data/make_arcface_backbone_keys.py

The file records, for each network, every state_dict key of arcface_torch's
`backbones.get_model(name)` (default kwargs) with its tensor shape, so the key-compatibility
test runs even where no arcface_torch checkout is available. Needs only torch.
"""
import importlib.util
import json
import os
import sys

NETWORKS = ("r18", "r34", "r50", "r100", "mbf")
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arcface_backbone_keys.json")


def import_arcface_package(root: str, package: str, alias: str):
    """Import `root/package` under `alias`, so it cannot clash with other top-level modules."""
    if alias in sys.modules:
        return sys.modules[alias]
    directory = os.path.join(root, package)
    spec = importlib.util.spec_from_file_location(
        alias, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory])
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module  # relative imports inside the package look it up here
    spec.loader.exec_module(module)
    return module


def collect_keys(root: str) -> dict:
    """{network: {state_dict key: shape as a list}} for arcface_torch's backbones."""
    backbones = import_arcface_package(root, "backbones", "_arcface_torch_backbones")
    table = {}
    for name in NETWORKS:
        state_dict = backbones.get_model(name).state_dict()
        table[name] = {key: list(tensor.shape) for key, tensor in state_dict.items()}
    return table


def main() -> None:
    root = os.environ.get("ARCFACE_TORCH_ROOT")
    if not root:
        sys.exit("set ARCFACE_TORCH_ROOT to an arcface_torch checkout (the folder holding backbones/)")
    table = collect_keys(root)
    with open(OUTPUT, "w") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    print(f"wrote {OUTPUT}: " + ", ".join(f"{n} {len(k)} keys" for n, k in table.items()))


if __name__ == "__main__":
    main()
