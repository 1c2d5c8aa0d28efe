"""Interoperability with the official V-Co / JiT code: load its released checkpoints."""
from .errors import ConversionError
from .official import ConversionResult, convert_official, load_official, plan_conversion
from .official_config import infer_config
from .official_keys import our_name

__all__ = ["ConversionError", "ConversionResult", "convert_official", "infer_config", "load_official",
           "our_name", "plan_conversion"]
