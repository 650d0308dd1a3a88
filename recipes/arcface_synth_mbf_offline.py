# arcface_torch config on a released (converted) shard: training reads the FaceMAE images from
# disk; the facemae block only checks that config.rec was made with this checkpoint and settings.
#   facemae convert work_dirs/synth work_dirs/synth_facemae --checkpoint work_dirs/synth_facemae_tiny/facemae.pt
#   facemae arcface-train --arcface-root ~/insightface/recognition/arcface_torch \
#       recipes/arcface_synth_mbf_offline.py --dry-run
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.0, 0.4)
config.network = "mbf"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 1.0
config.fp16 = False
config.momentum = 0.9
config.weight_decay = 5e-4
config.batch_size = 64
config.lr = 0.1
config.verbose = 500
config.dali = False

config.rec = "work_dirs/synth_facemae"  # output of `facemae convert`, with facemae_provenance.json
config.num_classes = 200
config.num_image = 4000
config.num_epoch = 10
config.warmup_epoch = 1
config.val_targets = []  # released shards carry no .bin; verify on the originals' holdout.bin instead

config.facemae = edict(
    checkpoint="work_dirs/synth_facemae_tiny/facemae.pt",
    mask_ratio=0.75, output="full", seed=0,
    stage="offline",
)
