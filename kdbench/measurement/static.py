"""What a model is, without running it on a target: parameters, size on disk, MACs."""
from __future__ import annotations

import io

import torch
from torch import nn

from kdbench.record import schema

MACS_COUNTER = "torch.utils.flop_counter"  # the value of the kdbench.macs_counter tag


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int | None:
    """Multiply-accumulates of one forward pass at batch 1 (None if the counter fails)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = torch.zeros(1, *input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return counter.get_total_flops() // 2
    except Exception:
        return None
    finally:
        model.train(was_training)


def size_on_disk_bytes(model: nn.Module) -> int:
    """Bytes of the saved ``state_dict`` (what a checkpoint of the model takes)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def static_metrics(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, float]:
    """Parameters (total, non-zero), size of the saved state_dict, and MACs (see ``MACS_COUNTER``)."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    out: dict[str, float] = {schema.PARAMS: params, schema.PARAMS_NONZERO: nonzero,
                             schema.SIZE_BYTES: size_on_disk_bytes(model)}
    macs = count_macs(model, input_size)
    if macs is not None:
        out[schema.MACS] = macs
    return out
