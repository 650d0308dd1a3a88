# arcface_torch config with FaceMAE on the device: every batch is masked and reconstructed by the
# frozen reconstructor right before the backbone (same masks as `facemae convert`).
#   facemae synth work_dirs/synth            # data;  then pretrain recipes/synth_facemae_tiny.py
#   facemae arcface-train --arcface-root ~/insightface/recognition/arcface_torch \
#       recipes/arcface_synth_mbf_facemae.py          # one process: a GPU if there is one, else the CPU
#   torchrun --nproc_per_node 8 --no-python facemae arcface-train \
#       --arcface-root ~/insightface/recognition/arcface_torch recipes/arcface_synth_mbf_facemae.py
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.0, 0.4)  # CosFace: converges faster than ArcFace on few identities
config.network = "mbf"
config.resume = False
config.output = None  # arcface_torch's default: work_dirs/arcface_synth_mbf_facemae
config.embedding_size = 512
config.sample_rate = 1.0
config.fp16 = False
config.momentum = 0.9
config.weight_decay = 5e-4
config.batch_size = 64
config.lr = 0.1
config.verbose = 500
config.dali = False  # the batch stage needs record keys, which DALI does not give

config.rec = "work_dirs/synth"
config.num_classes = 200
config.num_image = 4000
config.num_epoch = 10
config.warmup_epoch = 1
config.val_targets = ["holdout"]

# The one block that switches FaceMAE on.
config.facemae = edict(
    checkpoint="work_dirs/synth_facemae_tiny/facemae.pt",
    mask_ratio=0.75, output="full", seed=0,
    stage="batch",
)
