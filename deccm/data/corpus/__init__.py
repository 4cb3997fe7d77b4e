"""The real-media demo corpus: rendered public-domain music, generated clips, a planted relation.

``deccm data demo-corpus DST`` makes it offline in minutes. Modules, one concept each:
``catalog`` (which music21 pieces, six genre groups, licences), ``music`` (MIDI → audio
and the measured musical properties), ``video`` (ffmpeg clip from a visual-property
vector), ``relation`` (the planted map between the two and the true affinity) and
``build`` (uploaders, confounded choices, feature extraction, the native dataset).
"""
from deccm.data.corpus.build import SIZES, CorpusConfig, Timings, build_corpus, default_dest

__all__ = ["SIZES", "CorpusConfig", "Timings", "build_corpus", "default_dest"]
