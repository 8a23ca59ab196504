"""``spafoundation pretrain DATA --config CFG.yaml --out RUN``: self-supervised pre-training (iBOT, MAE, MaskFeat or SimCLR).

Several processes: ``torchrun --nproc_per_node N -m spafoundation pretrain ...``."""

from __future__ import annotations

from pathlib import Path

from spafoundation.commands._common import parse_sections, positive_int


def run(args) -> int:
    from spafoundation.train.pretrain import load_config, pretrain

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sets = list(args.set or [])
    if args.sections:
        sets.append(f"data.sections={parse_sections(args.sections)}")
    cfg_path = args.config
    if args.resume and not cfg_path and (Path(args.out) / "config.yaml").is_file():
        cfg_path = Path(args.out) / "config.yaml"  # resume with the run's own settings
    cfg = load_config(cfg_path, sets)
    final = pretrain(args.data, args.out, cfg, resume=args.resume, progress=not args.quiet, name=args.name)
    print(f"encoder written to {final} (load it with --encoder {final})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="self-supervised pre-training of a ViT on tissue tiles (iBOT, MAE, MaskFeat, SimCLR)")
    p.add_argument("data", help="dataset with H&E images (folder, manifest or .h5ad)")
    p.add_argument("--out", required=True, help="run folder (config, checkpoint.pt, history.csv, final/)")
    p.add_argument("--config", help="YAML config (see configs/pretrain/); defaults to a short MAE ViT-Ti run")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set optim.steps=500 --set objective.name=ibot")
    p.add_argument("--sections", help="comma-separated sections to take tiles from (default: all imaged)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    p.add_argument("--name", help="name the final encoder loads under (default pretrained-<objective>)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (1 is fastest for small models on a "
                   "busy machine: several threads spinning against other processes can be 10x slower)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)
