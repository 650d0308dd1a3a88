# The privacy-utility table on the embedded synthetic default (CPU: about 3.5 hours on 2 cores
# with native bf16, avx512_bf16; over twice that without).
#   python benchmarks/privacy_utility.py benchmarks/configs/privacy_utility_synth.py
# `protocol` overrides facemae_plugin/protocol/spec.py PROTOCOL_DEFAULTS (none here: the demo's protocol,
# so a finished `facemae demo` work directory is reused). Each variant is one row; `seeds` repeats it.
protocol = dict()

MAIN = [0, 1, 2]  # main rows: mean +- std over three seeds
SWEEP = [0]

variants = [
    dict(name="original", method="original", seeds=MAIN),
    dict(name="FaceMAE full 0.75", method="facemae", output="full", mask_ratio=0.75, seeds=MAIN),
    dict(name="FaceMAE paste 0.75", method="facemae", output="paste", mask_ratio=0.75, seeds=MAIN),
    dict(name="FaceMAE no-IRM full 0.75", method="facemae", output="full", mask_ratio=0.75, irm=False,
         seeds=MAIN),
    dict(name="masked 0.75", method="masked", mask_ratio=0.75, seeds=MAIN),
    dict(name="blur s3", method="blur", sigma=3.0, seeds=MAIN),
    dict(name="pixelate 8", method="pixelate", block_size=8, seeds=MAIN),
    dict(name="noise 25", method="noise", std=25.0, seeds=MAIN),
    # Mask-ratio sweep (the FaceMAE models are trained at 0.75 and applied at each ratio).
    dict(name="FaceMAE full 0.5", method="facemae", output="full", mask_ratio=0.5, seeds=SWEEP),
    dict(name="FaceMAE full 0.9", method="facemae", output="full", mask_ratio=0.9, seeds=SWEEP),
    dict(name="FaceMAE paste 0.5", method="facemae", output="paste", mask_ratio=0.5, seeds=SWEEP),
    dict(name="FaceMAE paste 0.9", method="facemae", output="paste", mask_ratio=0.9, seeds=SWEEP),
    dict(name="FaceMAE no-IRM full 0.5", method="facemae", output="full", mask_ratio=0.5, irm=False, seeds=SWEEP),
    dict(name="FaceMAE no-IRM full 0.9", method="facemae", output="full", mask_ratio=0.9, irm=False, seeds=SWEEP),
    dict(name="masked 0.5", method="masked", mask_ratio=0.5, seeds=SWEEP),
    dict(name="masked 0.9", method="masked", mask_ratio=0.9, seeds=SWEEP),
    # Stronger baselines: where do they land when pushed towards FaceMAE's leakage?
    dict(name="blur s6", method="blur", sigma=6.0, seeds=SWEEP),
    dict(name="pixelate 16", method="pixelate", block_size=16, seeds=SWEEP),
    dict(name="noise 60", method="noise", std=60.0, seeds=SWEEP),
    # The training recipe, swept: each trains another FaceMAE on split A (about 14 minutes on 2 cores).
    # IRM weight between off (0) and the default (1): where on the accuracy/leakage curve does it land?
    dict(name="FaceMAE full 0.75 IRM 0.3", method="facemae", output="full", mask_ratio=0.75,
         pretrain=dict(irm_weight=0.3), seeds=SWEEP),
    # MAE's masked-only pixel loss: visible patches are no longer trained to be copied into the release.
    dict(name="FaceMAE full 0.75 w_vis 0", method="facemae", output="full", mask_ratio=0.75,
         pretrain=dict(w_visible=0.0), seeds=SWEEP),
]
