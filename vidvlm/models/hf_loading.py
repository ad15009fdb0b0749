"""How vidvlm asks transformers to load a model: from local files, running no code from elsewhere."""

from __future__ import annotations

# trust_remote_code: never run a repository's Python. use_kernels: recent transformers (on by default in 5.25)
# swap layers for "hub kernels", compiled code fetched from the Hugging Face Hub when a model is put in training or
# inference mode or moved to a GPU. That is remote code as well, and a machine without internet cannot fetch it.
NO_REMOTE_CODE = {"trust_remote_code": False, "use_kernels": False}
