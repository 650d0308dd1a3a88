# GPU smoke test (minutes on one GPU; also runs on a CPU, slowly): the plugin's recogniser loop.
#   facemae synth work_dirs/synth && facemae train recipes/smoke_gpu_mbf.py
from easydict import EasyDict as edict

config = edict()
config.network = "mbf"
config.embedding_size = 512
config.margin_list = (1.0, 0.0, 0.4)
config.rec = "work_dirs/synth"
config.num_classes = 200
config.val_targets = ["holdout"]
config.batch_size = 128
config.optimizer = "sgd"
config.lr = 0.1
config.weight_decay = 5e-4
config.num_epoch = 2
config.warmup_epoch = 0
config.num_workers = 4
config.fp16 = True  # fp16 autocast on CUDA, bf16 on CPU
config.seed = 2048
config.output = "work_dirs/smoke_gpu_mbf"
