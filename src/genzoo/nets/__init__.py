"""Function approximators. They know nothing of the generative process that uses them."""

from genzoo.nets.conv import ConvDecoder, ConvEncoder
from genzoo.nets.mlp import MLP

__all__ = ["MLP", "ConvEncoder", "ConvDecoder"]
