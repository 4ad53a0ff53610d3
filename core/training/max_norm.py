"""scale_weight_norms: sd-scripts' max-norm regularisation of a LoRA network, applied after
each optimizer step."""

from __future__ import annotations

import torch

from core.models.lora import LoraHandles


def weight_delta(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """up @ down in the shape of the layer's weight (before alpha/dim), for Linear, 1x1 and
    3x3 (LoCon) convolutions."""
    if down.dim() == 2:
        return up @ down
    if down.shape[2:] == (1, 1) and up.shape[2:] == (1, 1):
        return (up.flatten(1) @ down.flatten(1))[:, :, None, None]
    # A 3x3 lora_down followed by a 1x1 lora_up is one 3x3 kernel: compose them as a convolution.
    return torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)


@torch.no_grad()
def apply_max_norm(handles: LoraHandles, max_norm: float) -> dict[str, float]:
    """Scale every LoRA module whose weight change (up @ down x alpha/dim) has a Frobenius
    norm above ``max_norm`` down to it, splitting the factor evenly (its square root) between
    lora_up and lora_down, as sd-scripts' apply_max_norm_regularization does.

    Returns what sd-scripts logs, under its TensorBoard names (max_norm/<name>): how many
    modules were scaled, and the mean and largest norm after scaling. Stays on the device
    with a single read at the end: a read per module would wait for the GPU hundreds of times
    a step."""
    ratios, norms = [], []
    for _, _, layer in handles.layers():
        if handles.is_lycoris(layer):  # validation refuses scale_weight_norms for those
            continue
        down, up = handles.down_up(layer)
        norm = (weight_delta(down, up) * layer.scaling[handles.adapter]).norm()
        # sd-scripts clamps the norm below at max/2 before the ratio: only norms above the max change.
        clamped = norm.clamp(min=max_norm / 2)
        ratio = clamped.clamp(max=max_norm) / clamped
        factor = ratio.sqrt()
        down.mul_(factor.to(down.dtype))  # a factor of exactly 1 leaves the weights bit for bit
        up.mul_(factor.to(up.dtype))
        ratios.append(ratio)
        norms.append(norm * ratio)
    if not norms:
        return {"keys_scaled": 0, "average_key_norm": 0.0, "max_key_norm": 0.0}
    all_norms = torch.stack(norms).float()
    summary = torch.stack([(torch.stack(ratios) != 1).sum().float(), all_norms.mean(), all_norms.max()]).tolist()
    return {"keys_scaled": int(summary[0]), "average_key_norm": summary[1], "max_key_norm": summary[2]}
