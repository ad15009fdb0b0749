"""Session-wide test corpus for the video decoding tests (written once, in about a second)."""

from __future__ import annotations

import pytest
from corpus import build_corpus  # tests/data is on sys.path (rootdir-relative test dirs have no __init__)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_corpus(str(tmp_path_factory.mktemp("video_corpus")))
