"""Data sets (embedded Fashion-MNIST and the paper's four), their preprocessing, and client partitions."""

from .datasets import DATASET_NAMES, Crops, Dataset, crop, data_sha256, draw_crops, load_dataset, normalize
from .partition import parse_scheme, partition

__all__ = ["DATASET_NAMES", "Crops", "Dataset", "crop", "data_sha256", "draw_crops", "load_dataset", "normalize", "parse_scheme", "partition"]
