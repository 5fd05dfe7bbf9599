"""Building blocks shared by every model of the package; one idea per module."""
from .attention import Attention
from .drop_path import DropPath
from .linear_attention import (DGLABlock, DualGatedLinearAttention, elu_feature_map,
                               linear_attention, quadratic_attention_reference)
from .mbconv import ConvBN, MBConv
from .mlp import MLPBlock, Mlp, MultiLayerMLP
from .norm import LayerNorm, LayerNorm2d, set_fast_norm
from .pooling import MultiscalePooling
from .position import PositionEmbeddingRandom
from .prompt_encoder import PromptEncoder
from .rope import RotaryEmbedding2d, rope_angles
from .token_masks import is_channels_last, token_masks
from .two_way import TwoWayAttentionBlock, TwoWayTransformer

__all__ = [
    "Attention", "ConvBN", "DGLABlock", "DropPath", "DualGatedLinearAttention", "LayerNorm", "LayerNorm2d",
    "MBConv", "MLPBlock", "Mlp", "MultiLayerMLP", "MultiscalePooling", "PositionEmbeddingRandom", "PromptEncoder",
    "RotaryEmbedding2d", "TwoWayAttentionBlock", "TwoWayTransformer", "elu_feature_map",
    "is_channels_last", "linear_attention", "quadratic_attention_reference", "rope_angles",
    "set_fast_norm", "token_masks",
]

# YOLOv8 conv blocks and CNN attention modules (used by QTSeg).
from .cnn_attention import ChannelAttentionBlock, SpatialAttention
from .conv import C2f, SPPF, Bottleneck, Conv, ConvTranspose

__all__ += ["Bottleneck", "C2f", "ChannelAttentionBlock", "Conv", "ConvTranspose", "SPPF",
            "SpatialAttention"]
