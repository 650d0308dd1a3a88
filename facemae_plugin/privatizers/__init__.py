"""One image in, one private image out: the FaceMAE reconstruction stage, the baselines and their numpy ops."""
