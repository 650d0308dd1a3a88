# Teacher recogniser on the synthetic training identities (CPU, minutes).
#   facemae synth work_dirs/synth && facemae train recipes/synth_teacher_mbf.py
# Its model.pt is the frozen IRM teacher of synth_facemae_tiny.py.
from easydict import EasyDict as edict

config = edict()
config.network = "mbf"
config.embedding_size = 512
config.margin_list = (1.0, 0.0, 0.4)  # CosFace: converges faster than ArcFace on few identities
config.rec = "work_dirs/synth"
config.num_classes = 200
config.val_targets = ["holdout"]
config.batch_size = 64
config.optimizer = "sgd"
config.lr = 0.1
config.weight_decay = 5e-4
config.num_epoch = 10
config.warmup_epoch = 1
config.num_workers = 2
config.fp16 = True  # bf16 autocast on CPU, fp16 on CUDA
config.seed = 2048
config.output = "work_dirs/synth_teacher_mbf"
