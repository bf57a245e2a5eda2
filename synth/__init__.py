"""Synthetic bilingual web corpus with ground-truth noise labels, and its loopback server."""
from synth.attributes import extract_attributes
from synth.corpus import generate_corpus
from synth.noise import NoiseRates
from synth.server import CorpusServer

__all__ = ["CorpusServer", "NoiseRates", "extract_attributes", "generate_corpus"]
