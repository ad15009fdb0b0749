"""vidvlm: vision-language models over video.

An image is a video of one frame: every model takes ``[B, T, 3, H, W]`` and is exact at ``T = 1``.
The public API is imported lazily so that ``import vidvlm`` stays cheap and never touches optional
backends (xformers, decord) until they are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vidvlm._lazy import lazy_attributes
from vidvlm.errors import CheckpointError, ConfigError, VideoDecodeError, VidVLMError

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    # input layer
    "open_video": "vidvlm.data.video",
    "Video": "vidvlm.data.video",
    "VideoMetadata": "vidvlm.data.video",
    "SamplerConfig": "vidvlm.data.sampling",
    "build_sampler": "vidvlm.data.sampling",
    "build_transform": "vidvlm.data.transforms",
    "VideoTextDataset": "vidvlm.data.datasets",
    "collate_video_text": "vidvlm.data.collate",
    "make_synthetic": "vidvlm.data.synthetic",
    "SHAPES_ATTRIBUTES": "vidvlm.data.synthetic",
    # model core
    "attention": "vidvlm.layers.attention",
    "AttnMask": "vidvlm.layers.attention",
    "set_attention_backend": "vidvlm.layers.attention",
    "PoolerConfig": "vidvlm.layers.pooling",
    "build_pooler": "vidvlm.layers.pooling",
    "fit_token_budget": "vidvlm.layers.pooling",
    "ConnectorConfig": "vidvlm.layers.connectors",
    "build_connector": "vidvlm.layers.connectors",
    "VideoViT": "vidvlm.models.vision",
    "VisionConfig": "vidvlm.models.vision",
    "VisionOutput": "vidvlm.models.vision",
    "load_vision_tower": "vidvlm.models.towers",
    "FrameWiseTower": "vidvlm.models.towers",
    "TowerEnsemble": "vidvlm.models.towers",
    "VideoFrontEnd": "vidvlm.models.frontend",
    "FrontEndConfig": "vidvlm.models.frontend",
    "TowerConfig": "vidvlm.models.frontend",
    # families
    "load": "vidvlm.models.registry",
    "build_model": "vidvlm.models.registry",
    "register_family": "vidvlm.models.registry",
    "list_families": "vidvlm.models.registry",
    "ContrastiveConfig": "vidvlm.models.contrastive",
    "ContrastiveModel": "vidvlm.models.contrastive",
    "LlavaConfig": "vidvlm.models.llava",
    "LlavaModel": "vidvlm.models.llava",
    "load_causal_lm": "vidvlm.models.lm",
    "import_llava_next_video": "vidvlm.models.llava_hf",
    # training and evaluation
    "Trainer": "vidvlm.train.trainer",
    "load_train_config": "vidvlm.train.config",
    "retrieval_metrics": "vidvlm.eval.retrieval",
    "zero_shot_classifier": "vidvlm.eval.retrieval",
    "zero_shot_accuracy": "vidvlm.eval.retrieval",
    "caption_metrics": "vidvlm.eval.captions",
    # captioning and features
    "caption": "vidvlm.captioning",
    "Captioner": "vidvlm.captioning",
    "extract_features": "vidvlm.extract",
    "iter_features": "vidvlm.extract",
    "extract_text_features": "vidvlm.extract",
    "load_features": "vidvlm.extract",
    "FeatureResult": "vidvlm.extract",
}

__all__ = ["VidVLMError", "VideoDecodeError", "ConfigError", "CheckpointError", "__version__", *_LAZY]
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, eager=__all__)


if TYPE_CHECKING:  # pragma: no cover
    from vidvlm.captioning import Captioner, caption  # noqa: F401
    from vidvlm.data.collate import collate_video_text  # noqa: F401
    from vidvlm.data.datasets import VideoTextDataset  # noqa: F401
    from vidvlm.data.sampling import SamplerConfig, build_sampler  # noqa: F401
    from vidvlm.data.synthetic import SHAPES_ATTRIBUTES, make_synthetic  # noqa: F401
    from vidvlm.data.transforms import build_transform  # noqa: F401
    from vidvlm.data.video import Video, VideoMetadata, open_video  # noqa: F401
    from vidvlm.eval.captions import caption_metrics  # noqa: F401
    from vidvlm.eval.retrieval import retrieval_metrics, zero_shot_accuracy, zero_shot_classifier  # noqa: F401
    from vidvlm.extract import (  # noqa: F401
        FeatureResult,
        extract_features,
        extract_text_features,
        iter_features,
        load_features,
    )
    from vidvlm.layers.attention import AttnMask, attention, set_attention_backend  # noqa: F401
    from vidvlm.layers.connectors import ConnectorConfig, build_connector  # noqa: F401
    from vidvlm.layers.pooling import PoolerConfig, build_pooler, fit_token_budget  # noqa: F401
    from vidvlm.models.contrastive import ContrastiveConfig, ContrastiveModel  # noqa: F401
    from vidvlm.models.frontend import FrontEndConfig, TowerConfig, VideoFrontEnd  # noqa: F401
    from vidvlm.models.llava import LlavaConfig, LlavaModel  # noqa: F401
    from vidvlm.models.llava_hf import import_llava_next_video  # noqa: F401
    from vidvlm.models.lm import load_causal_lm  # noqa: F401
    from vidvlm.models.registry import build_model, list_families, load, register_family  # noqa: F401
    from vidvlm.models.towers import FrameWiseTower, TowerEnsemble, load_vision_tower  # noqa: F401
    from vidvlm.models.vision import VideoViT, VisionConfig, VisionOutput  # noqa: F401
    from vidvlm.train.config import load_train_config  # noqa: F401
    from vidvlm.train.trainer import Trainer  # noqa: F401
