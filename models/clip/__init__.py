"""CLIP scoring backends behind one interface (see base.ClipBackend) and their factory."""
from models.clip.base import ClipBackend
from models.clip.factory import BackendSpec, load_backend, parse_spec
from models.clip.transforms import PixelSpec

__all__ = ["BackendSpec", "ClipBackend", "PixelSpec", "load_backend", "parse_spec"]
