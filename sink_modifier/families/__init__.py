"""Model families: LLaDA, Dream, DiffusionGemma, any bidirectional HF LM, and causal LMs.

>>> from sink_modifier.families import load_pretrained
>>> loaded = load_pretrained("path/to/LLaDA-8B-Base", trust_remote_code=True)
>>> loaded.family.name, loaded.mask_token_id
('llada', 126336)
"""

from .base import ModelFamily
from .loading import LoadedModel, load_pretrained
from .registry import FAMILIES, detect_family, family_of_model, get_family, read_config

__all__ = ["FAMILIES", "LoadedModel", "ModelFamily", "detect_family", "family_of_model", "get_family", "load_pretrained", "read_config"]
