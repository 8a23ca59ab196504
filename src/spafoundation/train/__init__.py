"""Training: self-supervised pre-training of encoders (pretrain.py) and its data (tiles.py, augment.py)."""
