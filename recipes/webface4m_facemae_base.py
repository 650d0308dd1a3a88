# FaceMAE on WebFace4M (205,990 identities, 4.2M images): same model, fewer epochs over more faces.
# 8 GPUs:  torchrun --nproc_per_node 8 -m facemae_plugin.cli pretrain recipes/webface4m_facemae_base.py
from easydict import EasyDict as edict

config = edict()
config.rec = "/data/webface4m"
config.batch_size = 128  # per GPU
config.optimizer = "adamw"
config.lr = 1.5e-4 * 1024 / 256
config.weight_decay = 0.05
config.num_epoch = 20
config.warmup_epoch = 1
config.fp16 = True
config.num_workers = 8
config.seed = 0
config.mae = edict(preset="base", patch_size=8, mask_ratio=0.75, output="full", w_mse=1.0, w_visible=1.0)
config.irm = edict(weight=1.0, teacher="work_dirs/webface4m_teacher_r50/model.pt", network="r50",
                   variant="mse")
config.output = "work_dirs/webface4m_facemae_base"
