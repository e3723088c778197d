"""Data: an IDX reader, the data-set registry (embedded MNIST, located or downloaded Fashion-MNIST) and views."""

from genzoo.data.datasets import DATASETS, ImageDataset, Split, get_spec, load_dataset, locate
from genzoo.data.idx import parse_idx, read_idx
from genzoo.data.views import VIEWS, batch_indices, binarize_fixed, dequantize, get_view

__all__ = ["DATASETS", "ImageDataset", "Split", "get_spec", "load_dataset", "locate", "parse_idx", "read_idx",
           "VIEWS", "batch_indices", "binarize_fixed", "dequantize", "get_view"]
