"""CorrDiff (Ma et al., ICML 2024): CDC whose diffusion decoder is corrected, at a few DDIM
steps, towards a privileged end-to-end decoder with weights the encoder chooses.

See docs/corrdiff.md. The codec class is imported lazily by ``zoo.load_codec``.
"""

from cdc.corrdiff.codec import CorrDiffCodec, corrdiff_weights_bytes
from cdc.corrdiff.correction import CorrectionConfig, PathRecord, corrected_sample, pack_w, unpack_w
from cdc.corrdiff.decoder import DecoderConfig, E2EDecoder

__all__ = ["CorrDiffCodec", "CorrectionConfig", "DecoderConfig", "E2EDecoder", "PathRecord",
           "corrdiff_weights_bytes", "corrected_sample", "pack_w", "unpack_w"]
