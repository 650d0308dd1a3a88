"""Stand-ins for libraries that upstream code imports but that do not install on current stacks.

- ``compat.mxnet``: the part of MXNet that arcface_torch's ``dataset.py`` and
  ``eval/verification.py`` call, on the plugin's pure-Python RecordIO and OpenCV. It goes into
  ``sys.modules`` only when the real MXNet is missing or broken (MXNet 1.9.1 needs numpy < 1.24).
"""
