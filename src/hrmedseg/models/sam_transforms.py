"""SAM's geometry outside the network: the longest side resized to the model's square input
(segment-anything's ``ResizeLongestSide``), boxes mapped onto that input, low-resolution masks
mapped back to the original image, and box lists flattened for one batched decoder call.

Pure functions of tensors and sizes, shared by :class:`~hrmedseg.models.sam.SamModel` (its
``forward``) and :class:`~hrmedseg.inference.predictor.SamPredictor`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["EMPTY_LOGIT", "BoxesLike", "resized_shape", "transform_boxes", "postprocess_masks",
           "flatten_boxes", "combine_box_masks"]

#: Logit given to pixels of an image that has no box prompt (sigmoid ≈ 0, finite in fp16).
EMPTY_LOGIT = -100.0

BoxesLike = torch.Tensor | Sequence[torch.Tensor]


def resized_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """Size after resizing the longest side to ``side`` (SAM's ResizeLongestSide)."""
    scale = side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def transform_boxes(boxes: torch.Tensor, original_size: tuple[int, int],
                    side: int) -> torch.Tensor:
    """Boxes (…, 4) ``(x0, y0, x1, y1)`` in original pixels → pixels of the resized image."""
    h, w = original_size
    nh, nw = resized_shape(h, w, side)
    scale = boxes.new_tensor([nw / w, nh / h, nw / w, nh / h])
    return boxes.to(scale.dtype) * scale


def postprocess_masks(masks: torch.Tensor, input_size: tuple[int, int],
                      original_size: tuple[int, int], side: int) -> torch.Tensor:
    """Low-res logits (P, K, s, s) → side² → crop the padding → original size (bilinear)."""
    masks = F.interpolate(masks, (side, side), mode="bilinear", align_corners=False)
    masks = masks[..., :input_size[0], :input_size[1]]
    return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


def flatten_boxes(boxes: BoxesLike, batch: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(B, 4), (B, N, 4) or a list of B (N_i, 4) boxes → all boxes (P, 4), the image index of
    each (P,) and the count per image."""
    if isinstance(boxes, torch.Tensor):
        if boxes.ndim == 2 and boxes.shape == (batch, 4):
            per_image = list(boxes.unsqueeze(1))
        elif boxes.ndim == 3 and boxes.shape[0] == batch and boxes.shape[-1] == 4:
            per_image = list(boxes)
        else:
            raise ValueError(f"boxes must be (B, 4), (B, N, 4) or a list of B (N_i, 4) "
                             f"tensors for B={batch} images, got shape {tuple(boxes.shape)}")
    else:
        per_image = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
        if len(per_image) != batch:
            raise ValueError(f"{len(per_image)} box lists for {batch} images")
    counts = [int(b.shape[0]) for b in per_image]
    flat = (torch.cat([b.to(device=device, dtype=torch.float32) for b in per_image])
            if sum(counts) else torch.zeros(0, 4, device=device))
    index = torch.repeat_interleave(torch.arange(batch, device=device),
                                    torch.tensor(counts, device=device))
    return flat, index, counts


def combine_box_masks(masks: torch.Tensor, iou: torch.Tensor, counts: list[int],
                      original_size: tuple[int, int]) -> torch.Tensor:
    """Per-box logits (P, K, H, W) → one (B, 1, H, W) map per image: the mask of highest
    predicted IoU per box, then per pixel the maximum over the image's boxes (``EMPTY_LOGIT``
    for an image without boxes)."""
    if masks.shape[1] > 1:
        best = iou.argmax(dim=1)
        masks = masks[torch.arange(masks.shape[0], device=masks.device), best].unsqueeze(1)
    out = [part.amax(dim=0) if part.shape[0] else masks.new_full((1, *original_size), EMPTY_LOGIT)
           for part in masks.split(counts)]
    return torch.stack(out)
