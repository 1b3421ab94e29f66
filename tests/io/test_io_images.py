"""load_image / image_size on generated files of every format, bad inputs, bombs, data URLs."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from medvl.errors import UserError

from medvl.io.images import (
    REASONS,
    ImageLoadError,
    decode_data_url,
    encode_data_url,
    image_files,
    image_size,
    load_image,
    rescale_to_uint8,
    to_rgb,
)


def saved(image: Image.Image, path: Path, fmt: str | None = None, **params) -> Path:
    image.save(path, fmt, **params)
    return path


def saved_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()


def reason_of(source, **kwargs) -> str:
    with pytest.raises(ImageLoadError) as caught:
        load_image(source, **kwargs)
    return caught.value.reason


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (its pixel data is a few bytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF"])
def test_each_format_loads_as_rgb_with_its_size(rgb_image, tmp_path, fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    path = saved(rgb_image, tmp_path / f"x.{fmt.lower()}", fmt)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (64, 48) == image_size(path)
    if fmt in ("PNG", "TIFF", "BMP"):  # lossless formats keep every pixel
        assert np.array_equal(np.asarray(image), np.asarray(rgb_image))
    assert load_image(path.read_bytes()).size == (64, 48)  # bytes work the same


def test_16bit_png_gets_real_contrast(tmp_path):
    values = np.linspace(1000, 4000, 64 * 32).reshape(32, 64).astype(np.uint16)
    path = saved(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    grey = np.asarray(load_image(path))[..., 0]
    assert grey.min() == 0 and grey.max() == 255  # stretched over its own 1000..4000 range
    assert 100 < grey.mean() < 155 and np.all(np.diff(grey[:, 0].astype(int)) >= 0)


def test_float_tiff_is_rescaled_with_nan_and_inf_handled(tmp_path):
    values = np.tile(np.linspace(-1.5, 2.5, 40, dtype=np.float32), (10, 1))
    values[0, 0], values[0, 1], values[0, 2] = np.nan, np.inf, -np.inf
    path = saved(Image.fromarray(values), tmp_path / "float.tif")
    grey = np.asarray(load_image(path))[..., 0]
    assert grey[1, 0] == 0 and grey[1, -1] == 255 and 120 < grey[1, 20] < 135
    assert (grey[0, 0], grey[0, 1], grey[0, 2]) == (0, 255, 0)


def test_constant_and_all_nan_images_do_not_divide_by_zero():
    assert np.all(rescale_to_uint8(np.full((3, 3), 7.0)) == 0)
    assert np.all(rescale_to_uint8(np.full((3, 3), np.nan)) == 0)


def test_cmyk_jpeg(tmp_path):
    path = saved(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    red = np.asarray(load_image(path)).reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_palette_with_transparency_goes_on_white(tmp_path):
    image = Image.new("P", (8, 4), 1)
    image.putpalette([0, 0, 0, 200, 0, 0])
    image.paste(0, (0, 0, 4, 4))
    path = saved(image, tmp_path / "p.png", transparency=0)
    pixels = np.asarray(load_image(path))
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[0, 7].tolist() == [200, 0, 0]
    path = saved(image, tmp_path / "opaque.png")  # without transparency index 0 stays black
    assert np.asarray(load_image(path))[0, 0].tolist() == [0, 0, 0]


def test_la_is_composited_on_white(tmp_path):
    alpha = Image.new("L", (8, 4), 255)
    alpha.paste(0, (0, 0, 4, 4))
    path = saved(Image.merge("LA", (Image.new("L", (8, 4), 60), alpha)), tmp_path / "la.png")
    pixels = np.asarray(load_image(path))
    assert pixels[0, 0].tolist() == [255] * 3 and pixels[0, 7].tolist() == [60] * 3


@pytest.mark.parametrize("mode", ["1", "L", "RGBA", "I", "F"])
def test_other_modes_load_from_tiff(mode):
    image = Image.new("RGB", (6, 4), (10, 200, 30)).convert(mode)
    assert load_image(saved_bytes(image)).mode == "RGB"


def test_to_rgb_keeps_colour_of_ycbcr_and_rgb():
    rgb = Image.new("RGB", (6, 4), (10, 200, 30))
    assert to_rgb(rgb) is rgb
    assert np.abs(np.asarray(to_rgb(rgb.convert("YCbCr"))).astype(int) - [10, 200, 30]).max() <= 2


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image = Image.new("RGB", (40, 20), "white")
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left edge
    path = saved(image, tmp_path / "rot.jpg", exif=exif.tobytes())
    loaded = load_image(path)
    assert loaded.size == (20, 40) == image_size(path)
    top = np.asarray(loaded)[:5].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[1] < 60  # the left edge is now on top


def test_gif_and_tiff_give_their_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    for name in ("anim.gif", "pages.tif"):
        path = saved(frames[0], tmp_path / name, save_all=True, append_images=frames[1:])
        assert Image.open(path).n_frames == 2
        assert np.asarray(load_image(path))[4, 8].tolist() == [255, 0, 0]


def test_bad_inputs_get_their_reason(tmp_path, rgb_image):
    jpeg = saved(rgb_image, tmp_path / "a.jpg").read_bytes()
    png = saved(rgb_image, tmp_path / "a.png").read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("<html>404 Not Found</html>\n")
    cases = {
        jpeg[: len(jpeg) // 2]: "truncated",
        png[: len(png) // 2]: "truncated",
        png[:40]: "corrupt",  # a PNG signature, then nothing readable
        np.random.default_rng(1).bytes(5000): "not_image",
        b"": "empty",
        tmp_path / "empty.png": "empty",
        tmp_path / "notes.jpg": "not_image",
        tmp_path / "nope.png": "missing",
        tmp_path: "unreadable",
    }
    for source, reason in cases.items():
        assert reason_of(source) == reason, source if isinstance(source, Path) else reason
        if reason == "truncated":  # the header is intact: image_size reads only that
            assert image_size(source) == (64, 48)
        else:
            with pytest.raises(ImageLoadError):
                image_size(source)


def test_error_shape(tmp_path):
    with pytest.raises(ImageLoadError) as caught:
        load_image(tmp_path / "nope.png")
    error = caught.value
    assert isinstance(error, ValueError) and error.reason in REASONS
    assert str(error) == f"{tmp_path / 'nope.png'}: missing: {error.detail}"
    with pytest.raises(ImageLoadError) as caught:
        load_image(b"garbage" * 50)
    assert caught.value.path == "<bytes>" and str(caught.value).startswith("<bytes>: not_image: ")
    with pytest.raises(ValueError):
        ImageLoadError("x", "made_up", "reasons come from a fixed set")


def test_decompression_bombs_fail_before_decoding(recwarn):
    huge = png_declaring(20_000, 20_000)  # 400 MP: past PIL's own hard limit
    assert len(huge) < 200 and reason_of(huge) == "too_large"
    assert reason_of(png_declaring(9_000, 9_000)) == "too_large"  # 81 MP: over our 64 MP default
    assert image_size(png_declaring(9_000, 9_000)) == (9_000, 9_000)
    # 100 MP under a raised max_pixels: PIL's warning becomes our error, not a warning.
    assert reason_of(png_declaring(10_000, 10_000), max_pixels=10**9) == "too_large"
    with pytest.raises(ImageLoadError) as caught:  # the line says whose limit it is, and that max_pixels won't lift it
        load_image(png_declaring(10_000, 10_000), max_pixels=10**9)
    assert caught.value.detail == (f"100000000 pixels exceeds Pillow's limit of {Image.MAX_IMAGE_PIXELS} "
                                   "(PIL.Image.MAX_IMAGE_PIXELS, which max_pixels does not raise)")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_max_pixels_is_per_call(rgb_image, tmp_path):
    path = saved(rgb_image, tmp_path / "a.png")
    assert reason_of(path, max_pixels=64 * 48 - 1) == "too_large"
    assert load_image(path, max_pixels=64 * 48).size == (64, 48)


def test_data_url_round_trip(rgb_image):
    url = encode_data_url(rgb_image, format="PNG")
    assert url.startswith("data:image/png;base64,")
    assert np.array_equal(np.asarray(decode_data_url(url)), np.asarray(rgb_image))
    small = decode_data_url(encode_data_url(rgb_image, max_side=32))
    assert small.size == (32, 24) and small.mode == "RGB"
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(decode_data_url(encode_data_url(rgba)))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError):
        encode_data_url(rgb_image, format="GIF")


def test_dicom_data_url_under_its_own_media_type():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's test files are not installed")
    payload = base64.b64encode(Path(path).read_bytes()).decode()
    image = decode_data_url(f"data:application/dicom;base64,{payload}")
    assert np.array_equal(np.asarray(image), np.asarray(load_image(path)))
    with pytest.raises(ImageLoadError, match="not an image"):
        decode_data_url(f"data:application/pdf;base64,{payload}")


def test_malformed_data_urls(rgb_image):
    good = encode_data_url(rgb_image, format="PNG")
    head, payload = good.split(",")
    cases = {
        "https://example.org/a.png": "bad_data_url",
        "data:image/png,rawbytes": "bad_data_url",
        "data:image/png;base64,@@@not base64@@@": "bad_data_url",
        "data:text/plain;base64," + base64.b64encode(b"hello").decode(): "bad_data_url",
        "data:image/png;base64," + base64.b64encode(b"hello there").decode(): "not_image",
        "data:image/png;base64,": "empty",
        f"{head},{payload[: len(payload) // 8 * 4]}": "truncated",
    }
    for url, reason in cases.items():
        with pytest.raises(ImageLoadError) as caught:
            decode_data_url(url)
        assert (caught.value.reason, caught.value.path) == (reason, "<data-url>"), url[:40]
    with pytest.raises(ImageLoadError) as caught:
        decode_data_url(good, max_bytes=100)
    assert caught.value.reason == "too_large"
    with pytest.raises(ImageLoadError) as caught:
        decode_data_url(good, max_pixels=100)
    assert caught.value.reason == "too_large"


def test_image_files_walks_folders_by_suffix_and_keeps_named_files(tmp_path, rgb_image):
    folder = tmp_path / "figures"
    (folder / "nested").mkdir(parents=True)
    walked = [saved(rgb_image, folder / "a.png"), saved(rgb_image, folder / "nested" / "b.GIF", "GIF"),
              saved(rgb_image, folder / "nested" / "c.dicom", "PNG")]  # found by suffix; decoding is load_image's
    (folder / "a.txt").write_text("a caption")
    named = saved(rgb_image, tmp_path / "scan.raw", "PNG")  # named explicitly: kept whatever its suffix
    assert image_files([folder, named, folder / "a.png"]) == sorted([*walked, named])
    with pytest.raises(UserError, match="nowhere: no such image file or folder"):
        image_files([folder, tmp_path / "nowhere"])


def test_image_files_walks_symlinked_folders_once_and_lists_each_entry_once(tmp_path, rgb_image):
    """Cluster data folders are often symlinks: a linked folder is walked (not silently skipped),
    a link cycle ends, the same entry reached by two routes (`..`, a trailing slash, a link to
    the folder) is listed once, and a dangling image link is listed for the reader to report."""
    real = tmp_path / "données" / "é 图像"
    real.mkdir(parents=True)
    scan = saved(rgb_image, real / "scan one.png")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "linked").symlink_to(real)
    (real / "loop").symlink_to(real)
    (tree / "gone.jpg").symlink_to(tmp_path / "moved away.jpg")
    assert image_files([tree]) == [tree / "gone.jpg", tree / "linked" / "scan one.png"]
    assert image_files([real, f"{real}/../é 图像/", tree / "linked", scan]) == [scan]
