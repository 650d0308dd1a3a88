# IRM teacher at paper scale: ArcFace r50 on CASIA-WebFace (10,572 identities, 494,414 images).
# 8 GPUs:  torchrun --nproc_per_node 8 -m facemae_plugin.cli train recipes/casia_teacher_r50.py
from easydict import EasyDict as edict

config = edict()
config.network = "r50"
config.embedding_size = 512
config.margin_list = (1.0, 0.5, 0.0)
config.rec = "/data/faces_webface_112x112"
config.num_classes = 10572
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]
config.batch_size = 128  # per GPU
config.optimizer = "sgd"
config.lr = 0.1
config.weight_decay = 5e-4
config.num_epoch = 20
config.warmup_epoch = 0
config.fp16 = True
config.num_workers = 4
config.seed = 2048
config.output = "work_dirs/casia_teacher_r50"
