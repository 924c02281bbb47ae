"""Scan I/O: real DICOMs no one here wrote, PHI never escaping, bit depths, channels, bad files."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
import torch
from PIL import Image

from xcounter.errors import InputError
from xcounter.io import ALLOWED_KEYWORDS, Scan, load_scan

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
CR_FILES = [PYDICOM_FILES / "dicomdirtests" / "77654033" / sub for sub in ("CR1/6154", "CR2/6247", "CR3/6278")]
PHI_VRS = {"PN", "LO", "SH", "DA", "TM", "DT", "UI", "LT", "ST", "UT", "AS"}


def phi_values(path: Path) -> set[str]:
    """Every identifying-looking string in the file (names, IDs, dates, UIDs, descriptions, ...)."""
    ds = pydicom.dcmread(path)
    found = set()
    for element in list(ds.iterall()) + list(ds.file_meta):
        if element.VR in PHI_VRS and element.keyword not in ALLOWED_KEYWORDS:
            values = element.value if isinstance(element.value, (list, pydicom.multival.MultiValue)) else [element.value]
            found |= {str(v).strip() for v in values if len(str(v).strip()) >= 4}
    return found


def expected_cr_pixels(path: Path) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 written out by hand: rescale, LINEAR window, MONOCHROME1 inversion."""
    ds = pydicom.dcmread(path)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    values = ds.pixel_array.astype(np.float64) * slope + intercept
    y_min, y_max = intercept, (2 ** ds.BitsStored - 1) * slope + intercept
    center, width = float(ds.WindowCenter) - 0.5, float(ds.WindowWidth) - 1
    windowed = ((values - center) / width + 0.5).clip(0, 1) * (y_max - y_min) + y_min
    return 1.0 - (windowed - y_min) / (y_max - y_min)


@pytest.mark.parametrize("path", CR_FILES, ids=lambda p: p.name)
def test_real_cr_dicoms_follow_modality_window_and_monochrome1(path):
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "WindowCenter" in ds  # the fixture is what we think
    scan = load_scan(path)
    assert scan.pixels.shape == (16, 16, 1) and scan.pixels.dtype == np.float32
    assert 0.0 <= scan.pixels.min() and scan.pixels.max() <= 1.0
    np.testing.assert_allclose(scan.pixels[..., 0], expected_cr_pixels(path), atol=1e-5)
    # MONOCHROME1: larger stored values must come out darker
    raw = ds.pixel_array.ravel().astype(float)
    assert np.corrcoef(raw, scan.pixels.ravel())[0, 1] < -0.9
    assert scan.name == path.name and scan.bit_depth == 12
    assert scan.metadata["Modality"] == "CR"
    assert scan.metadata["PhotometricInterpretation"] == "MONOCHROME1"
    assert scan.metadata["ImagerPixelSpacing"] == [0.1, 0.1]
    assert scan.metadata["Rows"] == scan.metadata["Columns"] == 16


@pytest.mark.parametrize("path", CR_FILES, ids=lambda p: p.name)
def test_no_phi_leaves_the_loader(path):
    phi = phi_values(path)
    assert {"Doe^Archibald", "77654033", "20010101"} <= phi  # the fixture really carries PHI
    scan = load_scan(path)
    exposed = repr(scan) + json.dumps(scan.summary()) + str(scan.metadata)
    leaked = sorted(value for value in phi if value in exposed)
    assert leaked == []
    assert set(scan.metadata) <= set(ALLOWED_KEYWORDS) | {"Format", "Channels", "Frames"}


def test_burned_in_annotation_is_flagged_and_other_tags_stay_out(tmp_path):
    ds = pydicom.dcmread(CR_FILES[0])
    ds.BurnedInAnnotation = "YES"
    ds.InstitutionName = "Saint Example Hospital"
    ds.ViewPosition = "PA"
    path = tmp_path / "burned.dcm"
    ds.save_as(path)
    scan = load_scan(path)
    assert scan.metadata["BurnedInAnnotation"] is True
    assert scan.metadata["ViewPosition"] == "PA"
    assert "Saint Example" not in repr(scan)


def test_free_text_in_an_allowlisted_code_field_is_dropped(tmp_path):
    ds = pydicom.dcmread(CR_FILES[0])
    ds["ViewPosition"].VR = "LO"
    ds.ViewPosition = "Doe^Archibald lateral"
    path = tmp_path / "odd.dcm"
    ds.save_as(path)
    assert load_scan(path).metadata["ViewPosition"] is None


def _fake_missing_decoder(monkeypatch):
    import pydicom.pixels

    class Missing:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Missing())


def test_compressed_dicom_without_codec_names_the_packages(monkeypatch):
    _fake_missing_decoder(monkeypatch)  # the JPEG 2000 file decodes here (Pillow): simulate a bare install
    with pytest.raises(InputError, match="pylibjpeg.*python-gdcm") as info:
        load_scan(PYDICOM_FILES / "JPEG2000.dcm")
    assert "JPEG 2000" in str(info.value) and "\n" not in str(info.value)


def test_jpeg_ls_dicom_has_no_decoder_in_this_environment():
    from pydicom.pixels import get_decoder

    path = PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm"
    syntax = pydicom.dcmread(path).file_meta.TransferSyntaxUID
    if get_decoder(syntax).is_available:  # someone installed a JPEG-LS plugin: then it must decode
        assert load_scan(path).pixels.shape == (64, 64, 1)
    else:
        with pytest.raises(InputError, match="JPEG-LS.*pylibjpeg"):
            load_scan(path)


@pytest.mark.parametrize("name, message", [("MR_truncated.dcm", "cannot be decoded"), ("rtplan.dcm", "no image")])
def test_broken_or_imageless_dicoms(name, message):
    with pytest.raises(InputError, match=message):
        load_scan(PYDICOM_FILES / name)


def test_rgb_dicom_keeps_colour():
    scan = load_scan(PYDICOM_FILES / "SC_rgb_rle.dcm")
    assert scan.channels == 3 and scan.metadata["PhotometricInterpretation"] == "RGB"
    raw = pydicom.dcmread(PYDICOM_FILES / "SC_rgb_rle.dcm").pixel_array
    np.testing.assert_allclose(scan.pixels, raw / 255.0, atol=1e-6)


# ----------------------------------------------------------------------------- PNG / TIFF / JPEG

def test_16bit_png_round_trip_keeps_precision(tmp_path):
    values = np.array([[0, 1, 2, 1000], [30001, 30002, 65534, 65535]], dtype=np.uint16)
    path = tmp_path / "scan16.png"
    Image.fromarray(values).save(path)
    scan = load_scan(path)
    assert scan.bit_depth == 16 and scan.pixels.shape == (2, 4, 1)
    np.testing.assert_array_equal(np.round(scan.pixels[..., 0].astype(np.float64) * 65535).astype(np.uint16), values)
    assert scan.pixels[0, 1, 0] > 0  # a 1/65535 step survives (8-bit would flatten it to 0)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3)], ids=["gray", "rgb"])
def test_16bit_tiff_round_trip_keeps_precision(tmp_path, shape):
    values = np.random.default_rng(0).integers(0, 65536, size=shape, dtype=np.uint16)
    path = tmp_path / "scan16.tif"
    tifffile.imwrite(path, values, photometric="rgb" if len(shape) == 3 else "minisblack")
    scan = load_scan(path)
    assert scan.bit_depth == 16 and scan.metadata["Format"] == "TIFF"
    restored = np.round(scan.pixels.astype(np.float64) * 65535).astype(np.uint16)
    np.testing.assert_array_equal(restored.reshape(values.shape), values)


def test_miniswhite_tiff_is_inverted(tmp_path):
    values = np.array([[0, 255]], dtype=np.uint8)
    path = tmp_path / "white.tif"
    tifffile.imwrite(path, values, photometric="miniswhite")
    np.testing.assert_allclose(load_scan(path).pixels[..., 0], [[1.0, 0.0]])


def test_gray_rgb_and_rgba_conversions(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    opaque = np.concatenate([rgb, np.full((6, 5, 1), 255, np.uint8)], axis=2)
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    half = opaque.copy()
    half[..., 3] = 128
    Image.fromarray(half).save(tmp_path / "half.png")
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.stack([gray, np.full_like(gray, 255)], axis=2), mode="LA").save(tmp_path / "la.png")

    scan_rgb = load_scan(tmp_path / "rgb.png")
    assert scan_rgb.channels == 3 and scan_rgb.bit_depth == 8
    np.testing.assert_allclose(scan_rgb.pixels, rgb / 255.0, atol=1e-7)
    np.testing.assert_allclose(load_scan(tmp_path / "opaque.png").pixels, scan_rgb.pixels)
    np.testing.assert_allclose(load_scan(tmp_path / "half.png").pixels, rgb / 255.0 * (128 / 255), atol=1e-6)
    scan_gray = load_scan(tmp_path / "gray.png")
    assert scan_gray.channels == 1
    np.testing.assert_allclose(scan_gray.pixels[..., 0], gray / 255.0, atol=1e-7)
    np.testing.assert_allclose(load_scan(tmp_path / "la.png").pixels, scan_gray.pixels)


def test_palette_and_jpeg_become_rgb(tmp_path):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    image.convert("P").save(tmp_path / "palette.png")
    image.save(tmp_path / "photo.jpg", quality=95)
    palette = load_scan(tmp_path / "palette.png")
    expected = np.asarray(Image.open(tmp_path / "palette.png").convert("RGB")) / 255.0
    np.testing.assert_allclose(palette.pixels, expected, atol=1e-7)
    jpeg = load_scan(tmp_path / "photo.jpg")
    assert jpeg.channels == 3 and jpeg.metadata["Format"] == "JPEG"


def test_png_text_chunks_never_reach_metadata(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "Patient Doe^Archibald 77654033")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "text.png", pnginfo=info)
    scan = load_scan(tmp_path / "text.png")
    assert "Doe" not in repr(scan) and "77654033" not in json.dumps(scan.summary())


def test_arrays_and_pil_images_and_to_tensor():
    scan = load_scan(np.array([[0, 255], [128, 64]], dtype=np.uint8))
    assert scan.name == "array" and scan.pixels.shape == (2, 2, 1)
    tensor = scan.to_tensor()
    assert tensor.shape == (1, 1, 2, 2) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[0, 0], torch.tensor([[0.0, 1.0], [128 / 255, 64 / 255]]))
    assert scan.to_tensor(channels=3).shape == (1, 3, 2, 2)
    tensor.zero_()
    assert scan.pixels.max() == 1.0  # the tensor is a copy, not a view of the scan
    rgb = load_scan(Image.fromarray(np.full((3, 4, 3), 51, np.uint8)))
    assert rgb.to_tensor().shape == (1, 3, 3, 4)
    assert torch.allclose(rgb.to_tensor(channels=1), torch.full((1, 1, 3, 4), 0.2))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        load_scan(np.full((2, 2), 3.0, dtype=np.float32))
    with pytest.raises(InputError, match="not an image"):
        load_scan(np.zeros((2, 2, 2, 2)))
    assert "array(" not in repr(scan) and "2x2" in repr(scan)  # no pixel dump


# ----------------------------------------------------------------------------- bad files

def _png_bytes(width: int = 8, height: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, size=(height, width), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _with_ihdr_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's header to claim another size (valid CRC), leaving the pixel data alone."""
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    return data[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + data[33:]


@pytest.mark.parametrize("case", ["missing", "empty", "text", "truncated", "folder"])
def test_bad_files_raise_one_clear_line(tmp_path, case):
    path = tmp_path / "scan.png"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not an image\n")
    elif case == "truncated":
        path.write_bytes(_png_bytes(64, 64)[:200])
    elif case == "folder":
        path.mkdir()
    expected = {"missing": "not found", "empty": "empty", "text": "not a readable image",
                "truncated": "truncated", "folder": "not a file"}[case]
    with pytest.raises(InputError, match=expected) as info:
        load_scan(path)
    assert "\n" not in str(info.value)


def test_over_large_images_are_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_with_ihdr_size(_png_bytes(), 60_000, 50_000))  # claims 3 gigapixels, holds 64
    with pytest.raises(InputError, match="3000.0 megapixels, over the limit of 100 megapixels"):
        load_scan(path)
    with pytest.raises(InputError, match="over the limit"):
        load_scan(CR_FILES[0], max_pixels=100)  # 16x16 = 256 pixels
    assert isinstance(load_scan(CR_FILES[0], max_pixels=256), Scan)
