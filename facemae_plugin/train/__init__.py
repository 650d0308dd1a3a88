"""Recipe runners: FaceMAE pretraining and the arcface-style recognition loop."""
