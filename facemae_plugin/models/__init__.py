"""Neural networks of the plugin: the FaceMAE reconstructor and arcface_torch-compatible recognisers."""
