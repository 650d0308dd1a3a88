# Where FaceMAE lands on the worst-case frontier against the baselines, in one seed: the settings a
# pixel matcher should find hardest (masked-only pixel loss, a higher mask ratio, full vs paste) beside
# the baselines at strengths around them, under the whole attacker suite. Trains two recognisers per
# row (the row's own and its adaptive attacker) and two FaceMAE models.
#   python benchmarks/privacy_utility.py benchmarks/configs/privacy_utility_frontier.py
protocol = dict()
attackers = ["pixels", "verbatim", "teacher", "informed", "adaptive"]

variants = [
    dict(name="original", method="original"),
    dict(name="FaceMAE full 0.75", method="facemae", output="full", mask_ratio=0.75),
    dict(name="FaceMAE paste 0.75", method="facemae", output="paste", mask_ratio=0.75),
    dict(name="FaceMAE full 0.9", method="facemae", output="full", mask_ratio=0.9),
    # MAE's masked-only pixel loss at a higher ratio, trained at the ratio it releases at.
    dict(name="FaceMAE full 0.9 w_vis 0", method="facemae", output="full", mask_ratio=0.9,
         pretrain=dict(w_visible=0.0, mask_ratio=0.9)),
    dict(name="masked 0.9", method="masked", mask_ratio=0.9),
    dict(name="blur s6", method="blur", sigma=6.0),
    dict(name="blur s16", method="blur", sigma=16.0),
    dict(name="pixelate 16", method="pixelate", block_size=16),
]
