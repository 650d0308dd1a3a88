# Paper scale, 8 GPUs: arcface_torch r50 on CASIA-WebFace through the FaceMAE batch stage, with IRM
# joined to the recognition loss (frozen r50 teacher on the originals vs the backbone on the
# reconstructions). Set irm.weight = 0 (or drop the block) for plain arcface_torch + FaceMAE.
#   torchrun --nproc_per_node 8 --no-python facemae arcface-train \
#       --arcface-root ~/insightface/recognition/arcface_torch recipes/arcface_casia_r50_facemae_irm.py
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.5, 0.0)
config.network = "r50"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 1.0
config.fp16 = True  # the reconstructor follows: fp16 autocast on CUDA unless facemae.autocast says otherwise
config.momentum = 0.9
config.weight_decay = 5e-4
config.batch_size = 128
config.lr = 0.1
config.verbose = 2000
config.dali = False

config.rec = "/data/faces_webface_112x112"
config.num_classes = 10572
config.num_image = 490623
config.num_epoch = 20
config.warmup_epoch = 0
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]

config.facemae = edict(
    checkpoint="work_dirs/casia_facemae_base/facemae.pt",
    mask_ratio=0.75, output="full", seed=0,
    stage="batch",
)
config.irm = edict(weight=1.0, teacher="work_dirs/casia_teacher_r50/model.pt", network="r50", variant="mse")
