"""vco: pixel-space diffusion with visual co-denoising (V-Co) on the JiT transformer."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vco")
except PackageNotFoundError:      # a source tree on sys.path without an install
    __version__ = "0+unknown"
