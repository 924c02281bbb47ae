"""Scan I/O: PNG / JPEG / TIFF (8- and 16-bit) and DICOM to float pixels in [0, 1] with safe metadata."""
from xcounter.io.dicom import ALLOWED_KEYWORDS
from xcounter.io.pixels import MAX_PIXELS
from xcounter.io.scan import Scan, load_scan

__all__ = ["ALLOWED_KEYWORDS", "MAX_PIXELS", "Scan", "load_scan"]
