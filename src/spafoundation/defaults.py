"""Every setting's one default, shared by the Python API (``sf.tl``), the CLI's options and ``run``'s config.

Literals only: the CLI builds its parser from these, and ``spafoundation --help`` must not import torch or sklearn."""

ENCODER = "spafoundation-default"
EXPRESSION_GENES = "hvg:50"  # hvg:K, mean:K or a gene-list file (tasks/expression.py)
# ridge-ensemble: the mean of a ridge on every feature block and one on the spot's colour/texture and nuclei alone,
# plus two shared expression programs, its targets reduced to the training transcriptome's spot factors
# (tasks/heads.py). Across patients (HER2ST C <-> A1, hvg:50) mean r 0.075 against 0.074 without the programs,
# 0.072 with the targets as they are and 0.063 for one ridge; within patient C 0.176 / 0.172 / 0.171 / 0.161
EXPRESSION_HEAD = "ridge-ensemble"
TARGET_SUM = 1e4  # expression targets: log1p(counts / library size * TARGET_SUM)
SUPERRES_GENES = "hvg:50"
TUMOR_GRID_UM = 100.0  # pitch of the tumour map's tissue grid (0: spots only)
# colour_texture: the spot's colour/texture (patch and a twice-wider one), z-scored per section. In the clustering
# benchmark (HER2ST A1 + C2-C6, k-means, 5 seeds) it beat the shipped encoder + colour/texture ("image") with all six
# sections clustered together (ARI 0.136 vs 0.120, A1 0.090 vs 0.058) and each on its own (0.143 vs 0.117)
DOMAIN_FEATURES = "colour_texture"
DOMAIN_FEATURE_KINDS = ("colour_texture", "image", "expression", "predicted")
DOMAIN_METHOD = "kmeans"
N_DOMAINS = 7
DOMAIN_SMOOTH = 0.5  # weight of the neighbours' mean in a spot's smoothed features
DOMAIN_GRID_UM = 0.0  # domains on a tissue grid besides the spots (0: spots only)
DOMAIN_EXPRESSION_GENES = "hvg:1000"  # genes of features="expression"
REPORT_TOP_GENES = 4
# none, macenko or reinhard (io/stain.py). none: across patients (HER2ST, hvg:50) the default pipeline scored mean r
# 0.075 without, 0.066 with macenko, 0.070 with reinhard (README, "Stain normalisation")
STAIN_NORM = "none"
STAIN_NORM_METHODS = ("none", "macenko", "reinhard")
