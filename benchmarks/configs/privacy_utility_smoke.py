# A one-minute run of the whole protocol on a toy split (checks the plumbing, not the science).
#   python benchmarks/privacy_utility.py benchmarks/configs/privacy_utility_smoke.py --work-dir work_dirs/pu_smoke
protocol = dict(
    data=dict(train_identities=8, train_images_per_identity=4, release_identities=6, release_images_per_identity=4,
              holdout_identities=4, holdout_images_per_identity=4, num_pairs=20, attacker_identities=4,
              attacker_images_per_identity=4),
    teacher=dict(num_epoch=1, batch_size=8, warmup_epoch=0),
    facemae=dict(num_epoch=1, batch_size=8, warmup_epoch=0),
    recogniser=dict(num_epoch=1, batch_size=8, warmup_epoch=0),
    num_workers=0,
)

variants = [
    dict(name="original", method="original", seeds=[0]),
    dict(name="FaceMAE full 0.75", method="facemae", output="full", mask_ratio=0.75, seeds=[0, 1]),
    dict(name="FaceMAE paste 0.75", method="facemae", output="paste", mask_ratio=0.75, seeds=[0]),
    dict(name="FaceMAE no-IRM full 0.75", method="facemae", output="full", mask_ratio=0.75, irm=False, seeds=[0]),
    dict(name="masked 0.75", method="masked", mask_ratio=0.75, seeds=[0]),
    dict(name="blur s3", method="blur", sigma=3.0, seeds=[0, 1]),
    dict(name="pixelate 8", method="pixelate", block_size=8, seeds=[0]),
    dict(name="noise 25", method="noise", std=25.0, seeds=[0]),
]
