"""Box-prompted prediction with a SAM-family model, outside the network (segment-anything's
``SamPredictor``): boxes given in pixels of the original images are mapped onto the model's
input, every box of every image is decoded in one batched call, and the low-resolution masks
are mapped back to the original size.

    >>> predictor = SamPredictor(create_model("mobile_sam", pretrained=True))
    >>> logits = predictor.predict_boxes(images, [boxes_img0, boxes_img1])   # (B, 1, H, W)
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.sam import SamModel
from ..models.sam_transforms import (EMPTY_LOGIT, BoxesLike, combine_box_masks,
                                     postprocess_masks, transform_boxes)
from .prompts import boxes_from_mask

__all__ = ["SamPredictor", "supports_box_prompts", "EMPTY_LOGIT"]


def supports_box_prompts(model: nn.Module) -> bool:
    """True for a model :class:`SamPredictor` can prompt with boxes (the SAM family)."""
    return isinstance(model, SamModel)


class SamPredictor:
    """Box prompts → masks for a :class:`~hrmedseg.models.sam.SamModel` (not a copy: the
    predictor uses the model as it is, in its current mode and device)."""

    def __init__(self, model: SamModel) -> None:
        if not supports_box_prompts(model):
            raise TypeError(f"box prompts need a SAM-family model (SamModel), got "
                            f"{type(model).__name__}")
        self.model = model

    @property
    def side(self) -> int:
        return int(self.model.config.img_size)

    def transform_boxes(self, boxes: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Boxes (…, 4) in original pixels → pixels of the model's (resized) input."""
        return transform_boxes(boxes, original_size, self.side)

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, int],
                          original_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits → the model's padded input → crop the padding → original size."""
        return postprocess_masks(masks, input_size, original_size, self.side)

    def predict_boxes(self, images: torch.Tensor, boxes: BoxesLike,
                      multimask_output: bool = False, combine: bool = True,
                      return_iou: bool = False) -> Any:
        """Full-resolution mask logits for box prompts, batched over images and boxes.

        Args:
            images: (B, 3, H, W) RGB, 0-255 (uint8 or float).
            boxes: (B, 4) — one box per image; (B, N, 4); or a list of B tensors (N_i, 4)
                (N_i may be 0), ``(x0, y0, x1, y1)`` in pixels of the original image.
            multimask_output: let SAM propose 3 masks per box; with ``combine`` the one with the
                highest predicted IoU is kept.
            combine: True → (B, 1, H, W) logits, per pixel the maximum over the image's boxes
                (``EMPTY_LOGIT`` where an image has no box). False → a list of B tensors
                (N_i, K, H, W).
            return_iou: also return the IoU predictions (list of (N_i, K) tensors).
        """
        original = (int(images.shape[-2]), int(images.shape[-1]))
        masks, iou, counts = self.model.box_masks(images, boxes, multimask_output)
        result: Any = (combine_box_masks(masks, iou, counts, original) if combine
                       else list(masks.split(counts)))
        if return_iou:
            return result, list(iou.split(counts))
        return result

    def predict_from_masks(self, images: torch.Tensor, masks: torch.Tensor,
                           min_area: int = 1, **kwargs: Any) -> Any:
        """:meth:`predict_boxes` with one box per connected component of each (B, 1 or -, H, W)
        ground-truth mask (the papers' SAM protocol)."""
        if masks.ndim == 4:
            masks = masks[:, 0]
        boxes = [boxes_from_mask(m, min_area=min_area) for m in masks]
        return self.predict_boxes(images, boxes, **kwargs)
