# FaceMAE at paper scale: ViT-B/8 MAE + IRM (r50 teacher) on CASIA-WebFace.
# 8 GPUs:  torchrun --nproc_per_node 8 -m facemae_plugin.cli pretrain recipes/casia_facemae_base.py
from easydict import EasyDict as edict

config = edict()
config.rec = "/data/faces_webface_112x112"
config.batch_size = 128  # per GPU: 1024 in all
config.optimizer = "adamw"
config.lr = 1.5e-4 * 1024 / 256  # MAE's linear scaling rule
config.weight_decay = 0.05
config.num_epoch = 100
config.warmup_epoch = 5
config.fp16 = True
config.num_workers = 6
config.seed = 0
config.mae = edict(preset="base", patch_size=8, mask_ratio=0.75, output="full", w_mse=1.0, w_visible=1.0)
config.irm = edict(weight=1.0, teacher="work_dirs/casia_teacher_r50/model.pt", network="r50", variant="mse")
config.output = "work_dirs/casia_facemae_base"
