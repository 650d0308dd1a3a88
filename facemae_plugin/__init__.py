"""facemae-plugin: FaceMAE privacy-preserving face datasets for InsightFace arcface_torch."""

__version__ = "0.3.0"
