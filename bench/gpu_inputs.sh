#!/usr/bin/env bash
# What bench/gpu_session.sh needs on the GPU machine, made here (the machine reaches no network and not ../shared):
# devdata/her2st (the six imaged HER2ST sections, count tables cut to 300 genes: 25 MB) and .whl (the packages its
# python3 lacks, for Python 3.12: 22 MB). Both are git-ignored; pass them as the device run's carry: devdata, .whl.
#   bash bench/gpu_inputs.sh [../shared/data/her2st]
set -euo pipefail
SRC=${1:-../shared/data/her2st}
D=devdata/her2st
rm -rf devdata && mkdir -p $D/ST-cnts $D/ST-spotfiles $D/ST-pat/lbl $D/ST-cluster/lbl
cp -r "$SRC/ST-imgs" "$SRC/README.md" $D/
cp "$SRC/ST-cluster/cluster_label_map.tsv" $D/ST-cluster/ 2>/dev/null || true
cp "$SRC"/ST-pat/lbl/A1_* $D/ST-pat/lbl/
for s in C2 C3 C4 C5 C6 A1; do
  cp "$SRC/ST-spotfiles/${s}_selection.tsv" $D/ST-spotfiles/
  cp "$SRC/ST-cluster/lbl/$s-cluster-annotation.tsv.gz" $D/ST-cluster/lbl/
  .venv/bin/python -c "import pandas as pd, sys; pd.read_csv(sys.argv[1], sep='\t', index_col=0).iloc[:, :300].to_csv(sys.argv[2], sep='\t', compression='gzip')" \
    "$SRC/ST-cnts/$s.tsv.gz" "$D/ST-cnts/$s.tsv.gz"
done
rm -rf .whl
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl anndata==0.12.19 array-api-compat==1.16.0 donfig==0.8.1.post1 \
  natsort==8.4.0 legacy-api-wrap==1.5 numcodecs==0.16.6 zarr==3.1.6 scverse-misc==0.1.7 session-info2==0.4.2 \
  google-crc32c==1.9.0 pandas==2.3.3
du -sh devdata .whl
