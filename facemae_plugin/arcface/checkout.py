"""The user's arcface_torch checkout: import it from its own path and check what the plugin hooks.

arcface_torch is a folder of top-level modules (``dataset``, ``partial_fc_v2``, ``utils``,
``train_v2``, ...) run from its root, not an installed package. ``ArcfaceCheckout`` puts that root
first on ``sys.path`` and imports the modules by those names, refusing a same-named module that
was already imported from elsewhere. Before anything is hooked, the names the plugin wraps are
compared with what it was written against (deepinsight/insightface ``REFERENCE_COMMIT``); a drift
fails with one line naming the checkout, its commit, the file and both signatures.
"""
import ast
import inspect
import os
import subprocess
import sys

from ..compat import mxnet as compat_mxnet
from ..core.errors import FaceMAEError

REFERENCE_COMMIT = "7fadd420c2351d0ffa8cac403421c1a3ed733365"
REQUIRED_FILES = ("train_v2.py", "dataset.py", "partial_fc_v2.py", "utils/utils_config.py",
                  "backbones/__init__.py", "configs/base.py")

# (module, dotted attribute) -> parameter names the plugin relies on, in order. train_v2 passes
# get_dataloader's and PartialFC_V2's arguments by position, so order matters, not just names.
HOOKED_SIGNATURES = {
    ("dataset", "get_dataloader"): ("root_dir", "local_rank", "batch_size", "dali", "dali_aug", "seed",
                                    "num_workers"),
    ("dataset", "MXFaceDataset.__init__"): ("self", "root_dir", "local_rank"),
    ("partial_fc_v2", "PartialFC_V2.__init__"): ("self", "margin_loss", "embedding_size", "num_classes",
                                                 "sample_rate", "fp16"),
    ("partial_fc_v2", "PartialFC_V2.forward"): ("self", "local_embeddings", "local_labels"),
    ("utils.utils_config", "get_config"): ("config_file",),
    ("utils.utils_callbacks", "CallBackVerification.init_dataset"): ("self", "val_targets", "data_dir",
                                                                     "image_size"),
    ("eval.verification", "load_bin"): ("path", "image_size"),
    ("train_v2", "main"): ("args",),
}
# Names train_v2.py must import at module level, and from where: the plugin replaces them there.
TRAIN_V2_IMPORTS = {"get_dataloader": "dataset", "PartialFC_V2": "partial_fc_v2",
                    "get_config": "utils.utils_config", "PolynomialLRWarmup": "lr_scheduler",
                    "CallBackVerification": "utils.utils_callbacks"}


class ArcfaceCheckoutError(FaceMAEError):
    """The checkout is missing, incomplete, or no longer matches what the plugin hooks."""


def checkout_commit(root):
    """The git commit of ``root``, or a sentence saying why there is none.

    A copy of arcface_torch inside some other repository (a project's scratch folder) would report
    that repository's commit: the commit counts only when git tracks train_v2.py there.
    """
    try:
        head = _git(root, "rev-parse", "HEAD")
        tracked = head.returncode == 0 and _git(root, "ls-files", "--error-unmatch", "train_v2.py").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return "commit unknown: git not available"
    return head.stdout.strip() if tracked else "commit unknown: not a git checkout"


def _git(root, *argv):
    return subprocess.run(["git", "-C", root, *argv], capture_output=True, text=True, timeout=10)


def _module_file(module):
    return os.path.realpath(getattr(module, "__file__", None) or "")


class ArcfaceCheckout:
    """One arcface_torch folder (``recognition/arcface_torch`` of deepinsight/insightface)."""

    def __init__(self, root):
        self.root = os.path.realpath(os.fspath(root))
        missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(self.root, f))]
        if missing:
            raise ArcfaceCheckoutError(f"{root}: not an arcface_torch checkout (missing {', '.join(missing)}); "
                                       f"pass the recognition/arcface_torch folder of deepinsight/insightface")
        self.commit = checkout_commit(self.root)

    def where(self, filename):
        return f"arcface_torch {os.path.join(self.root, filename)} ({self.commit})"

    def _owns(self, module):
        return _module_file(module).startswith(self.root + os.sep)

    def import_module(self, name):
        """Import ``name`` from the checkout (``dataset``, ``utils.utils_config``, ...).

        MXNet is resolved first: the real one when it imports, else ``compat.mxnet``.
        """
        import importlib

        compat_mxnet.install()
        if self.root not in sys.path:
            sys.path.insert(0, self.root)
        top = name.split(".")[0]
        loaded = sys.modules.get(top)
        if loaded is not None and not self._owns(loaded):
            raise ArcfaceCheckoutError(f"module {top!r} is already imported from {_module_file(loaded) or loaded!r}, "
                                       f"not from arcface_torch {self.root}; run in a fresh process")
        return importlib.import_module(name)

    def forget(self):
        """Drop the checkout's modules and path entry (tests, or switching checkouts in one process)."""
        for name, module in list(sys.modules.items()):
            if module is not None and self._owns(module):
                del sys.modules[name]
        while self.root in sys.path:
            sys.path.remove(self.root)

    # ------------------------------------------------------------------ drift checks

    def check_signature(self, module, module_name, attribute):
        """Compare one hooked name with HOOKED_SIGNATURES; raise naming file and both signatures."""
        expected = HOOKED_SIGNATURES[(module_name, attribute)]
        filename = module_name.replace(".", "/") + ".py"
        target = module
        for part in attribute.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise ArcfaceCheckoutError(f"{self.where(filename)}: {attribute} not found; facemae-plugin "
                                           f"hooks it (written against insightface {REFERENCE_COMMIT[:8]})")
        found = tuple(inspect.signature(target).parameters)
        if found[:len(expected)] != expected or any(_required_extra(target, found[len(expected):])):
            raise ArcfaceCheckoutError(
                f"{self.where(filename)}: {attribute}({', '.join(found)}) drifted from "
                f"{attribute}({', '.join(expected)}) that facemae-plugin hooks (insightface "
                f"{REFERENCE_COMMIT[:8]}); update the plugin or use a matching checkout")

    def check_library_modules(self):
        """Import and check everything but train_v2 (which starts NCCL when imported)."""
        modules = {}
        for module_name, attribute in HOOKED_SIGNATURES:
            if module_name == "train_v2":
                continue
            modules.setdefault(module_name, self.import_module(module_name))
            self.check_signature(modules[module_name], module_name, attribute)
        return modules

    def check_train_v2_source(self):
        """Read train_v2.py without importing it: its imports of the hooked names and ``main(args)``."""
        path = os.path.join(self.root, "train_v2.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        imported = {alias.asname or alias.name: node.module for node in tree.body
                    if isinstance(node, ast.ImportFrom) for alias in node.names}
        for name, source in TRAIN_V2_IMPORTS.items():
            if imported.get(name) != source:
                raise ArcfaceCheckoutError(
                    f"{self.where('train_v2.py')}: expected `from {source} import {name}` at module level "
                    f"(found {imported.get(name) or 'no such import'}); facemae-plugin replaces that name")
        mains = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"]
        params = tuple(a.arg for a in mains[0].args.args) if mains else None
        if params != HOOKED_SIGNATURES[("train_v2", "main")]:
            shown = f"main({', '.join(params)})" if params is not None else "no main()"
            raise ArcfaceCheckoutError(f"{self.where('train_v2.py')}: expected main(args), found {shown}")


def _required_extra(function, names):
    """Extra parameters after the expected ones that have no default (callers would not pass them)."""
    params = inspect.signature(function).parameters
    return [n for n in names if params[n].default is inspect.Parameter.empty
            and params[n].kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
