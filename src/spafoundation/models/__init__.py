"""Encoders (SpaFoundation ViTs, random baselines, timm and hub models), checkpoints and spot embeddings."""

from spafoundation.models.encoder import Encoder, create_vit
from spafoundation.models.registry import build_encoder, list_encoders, register_encoder

__all__ = ["Encoder", "build_encoder", "create_vit", "embed_adata", "list_encoders", "register_encoder",
           "save_model_folder"]


def __getattr__(name):  # lazy: importing the package must not pull in io/anndata for users of build_encoder
    if name == "embed_adata":
        from spafoundation.models.embed import embed_adata

        return embed_adata
    if name == "save_model_folder":
        from spafoundation.models.weights import save_model_folder

        return save_model_folder
    raise AttributeError(name)
