# Pretraining on the synthetic identities: FaceMAE tiny + IRM against the mbf teacher (CPU).
#   facemae pretrain recipes/synth_facemae_tiny.py
from easydict import EasyDict as edict

config = edict()
config.rec = "work_dirs/synth"
config.batch_size = 64
config.optimizer = "adamw"
config.lr = 1e-3  # MAE's 1.5e-4 per 256 images is tuned for 800 epochs; a short CPU run needs more
config.weight_decay = 0.05
config.num_epoch = 10
config.warmup_epoch = 1
config.num_workers = 2
config.fp16 = True  # bf16 autocast on CPU, fp16 on CUDA
config.seed = 0
config.mae = edict(preset="tiny", patch_size=8, mask_ratio=0.75, output="full", w_mse=1.0, w_visible=1.0)
config.irm = edict(weight=1.0, teacher="work_dirs/synth_teacher_mbf/model.pt", network="mbf", variant="mse")
config.output = "work_dirs/synth_facemae_tiny"
