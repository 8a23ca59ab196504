"""The precision the spot pipeline builds encoders at when the user names none.

On CPU that is dynamic int8 (every Linear layer quantised): bench/cpu_fast_path.py measures it 1.3x (ViT-Ti) to 2.1x
(ViT-B/16) faster than fp32 with downstream Pearson unchanged within 0.001, the fastest path that keeps accuracy.
Elsewhere the encoder's own precision. The user chooses with ``sf.settings.precision`` (the CLI's ``--precision``
sets it for one command); a fitted model rebuilds its encoder at the precision it was fitted with unless the user
chose one."""

from __future__ import annotations

CHOICES = ("fp32", "bf16", "fp16", "int8")  # models/encoder.py PRECISIONS + int8, literal to keep --help fast
# The accuracy benchmarks run at fp32: the random-ViT baselines lose more to int8 than the trained encoder does, and a
# baseline should be at its best; bench/cpu_fast_path.py checks the pipeline itself at int8.
REFERENCE = "fp32"


def chosen_precision() -> str | None:
    """``sf.settings.precision`` where the user chose one, None for ``"auto"``."""
    from spafoundation._settings import settings

    return settings.chosen_precision()


def int8_available() -> bool:
    """Whether this torch build has a quantised CPU engine (fbgemm/x86 on Intel/AMD, qnnpack on ARM)."""
    import torch

    return any(e != "none" for e in torch.backends.quantized.supported_engines)


def default_precision(device="cpu") -> str | None:
    """The user's choice, else int8 on CPU where a quantised engine exists, else None (the encoder's own)."""
    chosen = chosen_precision()
    if chosen:
        return chosen
    import torch

    return "int8" if torch.device(device).type == "cpu" and int8_available() else None
