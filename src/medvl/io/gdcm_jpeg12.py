"""A pydicom decoder plugin: 12-bit JPEG Extended (Process 2 & 4) pixel data through GDCM.

pydicom's own GDCM plugin declines JPEG Extended with more than 8 bits per sample, although GDCM
decodes it with its 12-bit IJG codec (pydicom's reference values for `JPGExtended.dcm` match), and
the only other plugin that decodes it, pylibjpeg-libjpeg, is GPL-3 (medvl is Apache-2.0). This
module follows pydicom's plugin interface (`DECODER_DEPENDENCIES`, `is_available`, a frame
function) and is added to pydicom's `JPEGExtended12BitDecoder` by `medvl.io.dicom` on first use.
GDCM may print "Unsupported JPEG data precision 12" before it retries with the 12-bit codec.
"""

from __future__ import annotations

from typing import Any

from pydicom.uid import JPEGExtended12Bit

__all__ = ["DECODER_DEPENDENCIES", "is_available", "decode_frame"]

DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("gdcm>=3.0.10",)}


def is_available(uid: str) -> bool:
    """True for JPEG Extended when python-gdcm is installed."""
    if uid != JPEGExtended12Bit:
        return False
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def decode_frame(src: bytes, runner: Any) -> bytes:
    """One encoded frame decoded by GDCM, as the runner's native pixel bytes."""
    import gdcm

    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    kind = gdcm.PhotometricInterpretation.GetPIType(runner.photometric_interpretation)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    if runner.samples_per_pixel > 1:
        image.SetPlanarConfiguration(runner.planar_configuration)
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(JPEGExtended12Bit))))
    bits = runner.bits_stored
    image.SetPixelFormat(gdcm.PixelFormat(
        runner.samples_per_pixel, runner.bits_allocated, bits, bits - 1, runner.pixel_representation))
    buffer = image.GetBuffer()
    if buffer is None:
        raise ValueError("GDCM could not decode the JPEG Extended frame")
    return buffer.encode("utf-8", "surrogateescape")  # GDCM hands back bytes as a str
