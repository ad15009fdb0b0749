"""Feature extraction: the Python API (``extract_features``, ``iter_features``, ``extract_text_features``) and the
resumable shard store written by ``tools/extract_features.py`` (``extract_to_dir``, ``load_features``)."""

from vidvlm.extract.api import ExtractSummary, extract_features, extract_text_features, extract_to_dir, iter_features
from vidvlm.extract.result import LEVELS, FeatureResult
from vidvlm.extract.shards import ShardWriter, iter_stored, load_features, read_index
from vidvlm.extract.sources import list_sources

__all__ = [
    "LEVELS",
    "ExtractSummary",
    "FeatureResult",
    "ShardWriter",
    "extract_features",
    "extract_text_features",
    "extract_to_dir",
    "iter_features",
    "iter_stored",
    "list_sources",
    "load_features",
    "read_index",
]
