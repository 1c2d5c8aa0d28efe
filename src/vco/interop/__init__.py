"""Interoperability with the official V-Co / JiT code: load its released checkpoints."""
from .official import (ConversionError, ConversionResult, convert_official, infer_config, load_official,
                       our_name, plan_conversion)

__all__ = ["ConversionError", "ConversionResult", "convert_official", "infer_config", "load_official",
           "our_name", "plan_conversion"]
