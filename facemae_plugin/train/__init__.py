"""Recipe runners: FaceMAE pretraining (stage 1) and the arcface-style recognition loop."""
