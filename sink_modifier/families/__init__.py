"""Model families: LLaDA, Dream, DiffusionGemma, any bidirectional HF LM, and causal LMs.

>>> from sink_modifier.families import load_pretrained
>>> loaded = load_pretrained("path/to/LLaDA-8B-Base", trust_remote_code=True)
>>> loaded.family.name, loaded.mask_token_id
('llada', 126336)
"""

from .base import ModelFamily
from .config import quantization_config, read_config
from .loading import DTYPES, LoadedModel, ModelFolder, load_pretrained, load_tokenizer, open_model_folder
from .registry import FAMILIES, detect_family, family_of_model, get_family

__all__ = [
    "DTYPES",
    "FAMILIES",
    "LoadedModel",
    "ModelFamily",
    "ModelFolder",
    "detect_family",
    "family_of_model",
    "get_family",
    "load_pretrained",
    "load_tokenizer",
    "open_model_folder",
    "quantization_config",
    "read_config",
]
