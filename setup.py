"""Packaging for facemae-plugin: FaceMAE privacy-preserving face datasets for arcface_torch."""
import os

from setuptools import find_packages, setup


def read_version():
    path = os.path.join(os.path.dirname(__file__), "facemae_plugin", "__init__.py")
    with open(path) as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip('"')
    raise RuntimeError("__version__ not found in facemae_plugin/__init__.py")


setup(
    name="facemae-plugin",
    version=read_version(),
    description="FaceMAE privacy-preserving face datasets as a plugin for InsightFace's arcface_torch",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["facemae_plugin", "facemae_plugin.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch",
        "torchvision",
        "timm",
        "numpy",
        "easydict",
        "onnx",
        "onnxruntime",
        "opencv-python-headless",
        "tqdm",
        "matplotlib",
        "faiss-cpu",  # the audit's approximate search beyond the exact limit
        "openvino",  # the compiled CPU runtime of long embedding jobs (verify, audit)
    ],
    extras_require={
        # Parquet both ways and the Hub dataset folder (release --hub): its card's YAML, its Croissant
        "hub": ["pyarrow", "pyyaml"],
        # the tests also load what --hub writes with the Hub's own readers and Croissant's validator
        "test": ["pytest", "hypothesis", "insightface", "scikit-learn", "pyarrow", "pyyaml", "datasets",
                 "mlcroissant", "huggingface_hub"],
        # what a user's arcface_torch checkout imports besides torch (train_v2, eval/verification.py)
        "arcface": ["tensorboard", "scikit-learn", "scipy"],
    },
    entry_points={"console_scripts": ["facemae = facemae_plugin.cli:main"]},
)
