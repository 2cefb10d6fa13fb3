"""FileInputs: image files decoded, resized and batched by tf.data, in the order asked."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from clid_tf.data import image_files
from clid_tf.data.inputs import FileInputs, read_numpy
from tests.helpers import images
from tests.helpers.images import pixels, write_image, write_tree


def _batches(source, order, **kwargs):
    ids = tf.data.Dataset.from_tensor_slices(np.asarray(order, np.int64))
    return [(i, x) for i, x in source.read(ids, **kwargs).as_numpy_iterator()]


def _pillow(path: str, channels: int) -> np.ndarray:
    image = Image.open(path)
    array = np.asarray(image.convert('RGB' if channels == 3 else 'L'))
    return array if channels == 3 else array[..., None]


def test_png_files_decode_exactly_in_the_order_asked(tmp_path):
    write_tree(tmp_path, {'a': 5, 'b': 6}, shape=(6, 5, 3))
    files = image_files.folder_splits(tmp_path)['train']
    kept, shape, _ = image_files.check_images(files)
    source = FileInputs(kept, shape)
    assert len(source) == 11 and source.element_shape == (6, 5, 3) and source.dtype == 'uint8'
    order = np.random.default_rng(0).permutation(11)
    batches = _batches(source, order, batch_size=4)
    assert [len(i) for i, _ in batches] == [4, 4, 3]
    ids = np.concatenate([i for i, _ in batches])
    images = np.concatenate([x for _, x in batches])
    np.testing.assert_array_equal(ids, order)  # parallel map, order kept
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images, np.stack([_pillow(files.paths[i], 3) for i in order]))
    assert list(source.names()[:2]) == ['a/00.png', 'a/01.png']


def test_drop_remainder_gives_static_batches(tmp_path):
    write_tree(tmp_path, {'a': 4, 'b': 3})
    files, shape, _ = image_files.check_images(image_files.folder_splits(tmp_path)['train'])
    source = FileInputs(files, shape)
    ids = tf.data.Dataset.range(7)
    dataset = source.read(ids, batch_size=3, drop_remainder=True)
    assert dataset.element_spec[1].shape == (3, 6, 5, 3)
    assert [list(i) for i, _ in dataset.as_numpy_iterator()] == [[0, 1, 2], [3, 4, 5]]


def test_grey_and_colour_jpeg_and_gif_first_frame(tmp_path):
    grey = write_tree(tmp_path / 'grey', {'a': 2, 'b': 1}, shape=(8, 8, 1))
    files, shape, _ = image_files.check_images(
            image_files.folder_splits(tmp_path / 'grey')['train'])
    assert shape == (8, 8, 1)
    np.testing.assert_array_equal(read_numpy(FileInputs(files, shape), [2, 0]),
                                  np.stack([_pillow(grey[2], 1), _pillow(grey[0], 1)]))
    colour = tmp_path / 'colour'
    jpeg = write_image(colour / 'a' / 'x.jpg', pixels(1, (8, 8, 3)), 'JPEG', quality=90)
    frames = [Image.fromarray(pixels(k, (8, 8, 3))).convert('P') for k in (2, 3)]
    gif = str(colour / 'b' / 'y.gif')
    (colour / 'b').mkdir()
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    files, shape, _ = image_files.check_images(image_files.folder_splits(colour)['train'])
    got = read_numpy(FileInputs(files, shape), [0, 1])
    # JPEG: TensorFlow's decoder (fast integer IDCT) and Pillow's (accurate IDCT) differ a little
    difference = np.abs(got[0].astype(int) - _pillow(jpeg, 3))
    assert difference.max() <= 6 and difference.mean() < 1
    np.testing.assert_array_equal(got[1], _pillow(gif, 3))  # first frame only


def test_resize_to_image_size(tmp_path):
    sizes = [(12, 20), (7, 7), (30, 9)]
    paths = [write_image(tmp_path / ('a' if k < 2 else 'b') / f'{k}.png', pixels(k, (*hw, 3)))
             for k, hw in enumerate(sizes)]
    files = image_files.folder_splits(tmp_path)['train']
    kept, shape, _ = image_files.check_images(files, image_size=10)
    source = FileInputs(kept, shape, image_size=10)
    got = read_numpy(source, [0, 1, 2])
    assert got.shape == (3, 10, 10, 3) and got.dtype == np.uint8
    for image, path in zip(got, paths):
        decoded = _pillow(path, 3)
        resized = tf.image.resize(decoded, (10, 10), antialias=True).numpy()
        np.testing.assert_array_equal(image, np.clip(np.round(resized), 0, 255))
        # and close to Pillow's own antialiased bilinear resize
        pil = np.asarray(Image.open(path).convert('RGB').resize((10, 10), Image.BILINEAR))
        assert np.abs(image.astype(float) - pil).mean() < 8


def test_a_file_of_another_size_fails_at_decode(tmp_path):
    write_tree(tmp_path, {'a': 1, 'b': 1})
    files, shape, _ = image_files.check_images(image_files.folder_splits(tmp_path)['train'])
    write_image(files.paths[1], pixels(5, (9, 9, 3)))  # changed after the check
    with pytest.raises(tf.errors.InvalidArgumentError):
        read_numpy(FileInputs(files, shape), [0, 1])


def test_element_shape_must_match_image_size(tmp_path):
    write_tree(tmp_path, {'a': 1, 'b': 1})
    files = image_files.folder_splits(tmp_path)['train']
    with pytest.raises(ValueError, match='does not match image_size'):
        FileInputs(files, (6, 5, 3), image_size=8)
    with pytest.raises(ValueError, match='1 or 3'):
        FileInputs(files, (6, 5, 4))


def _smooth(shape, seed):
    """uint8 [H, W, C]: a smooth random image (sums of low-frequency waves), on which
    resampling filters agree closely."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing='ij')
    image = np.zeros(shape, np.float64)
    for channel in range(shape[2]):
        for _ in range(3):
            fy, fx, phase = rng.uniform(0.02, 0.12), rng.uniform(0.02, 0.12), rng.uniform(0, 6)
            image[..., channel] += np.sin(2 * np.pi * (fy * rows + fx * cols) + phase)
    return np.round(127.5 + 40 * image).clip(0, 255).astype(np.uint8)


def _torchvision_geometry(height, width, shorter, crop):
    """torchvision's Resize(shorter) output size and CenterCrop(crop) offsets, written out
    as in torchvision.transforms.functional (int() truncation, Python round half-to-even)."""
    if width <= height:
        size = (int(shorter * height / width), shorter)
    else:
        size = (shorter, int(shorter * width / height))
    return size, int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))


def test_resize_shorter_then_centre_crop_is_torchvisions(tmp_path):
    """Resize(R) + CenterCrop(S): exact geometry (sizes truncated, offsets rounded half to
    even) where no resize is needed, TensorFlow's antialiased bilinear resize where it is,
    and within a grey level or two of Pillow's (torchvision's backend) on smooth images."""
    shorter, crop = 12, 8
    # (H, W): already R on the short side (crop only; (12, 19) has the half-way offset 5.5
    # -> 6, (12, 17) 4.5 -> 4), landscape and portrait with truncated long sides
    sizes = [(12, 19), (17, 12), (12, 17), (30, 45), (35, 48), (61, 40)]
    paths = [write_image(tmp_path / ('a' if k % 2 else 'b') / f'{k}.png', _smooth((*hw, 3), k))
             for k, hw in enumerate(sizes)]
    files = image_files.folder_splits(tmp_path)['train']
    kept, shape, _ = image_files.check_images(files, image_size=crop)
    source = FileInputs(kept, shape, image_size=crop, resize_shorter=shorter)
    order = [list(kept.paths).index(str(p)) for p in paths]
    got = read_numpy(source, order)
    assert got.shape == (len(sizes), crop, crop, 3) and got.dtype == np.uint8
    for image, path, (h, w) in zip(got, paths, sizes):
        (rh, rw), top, left = _torchvision_geometry(h, w, shorter, crop)
        decoded = _pillow(path, 3)
        if (rh, rw) == (h, w):
            np.testing.assert_array_equal(image, decoded[top:top + crop, left:left + crop])
            continue
        resized = tf.image.resize(decoded, (rh, rw), antialias=True).numpy()
        want = np.clip(np.round(resized), 0, 255)[top:top + crop, left:left + crop]
        np.testing.assert_array_equal(image, want)
        pil = np.asarray(Image.open(path).convert('RGB').resize((rw, rh), Image.BILINEAR),
                         np.float64)[top:top + crop, left:left + crop]
        assert np.abs(image - pil).mean() < 1.5 and np.abs(image - pil).max() <= 6
    assert [_torchvision_geometry(12, w, 12, 8)[2] for w in (19, 17)] == [6, 4]


def test_resize_shorter_needs_a_crop_it_can_take(tmp_path):
    write_tree(tmp_path, {'a': 1, 'b': 1})
    files = image_files.folder_splits(tmp_path)['train']
    with pytest.raises(ValueError, match='needs image_size'):
        FileInputs(files, (6, 6, 3), resize_shorter=8)
    with pytest.raises(ValueError, match='smaller than the centre crop'):
        FileInputs(files, (8, 8, 3), image_size=8, resize_shorter=6)


def test_headers_give_the_size_before_decoding_and_bombs_are_never_decoded():
    """encoded_size reads height and width from each format's header; decode_checked
    refuses an image whose header declares more than MAX_IMAGE_PIXELS before decoding it
    (a 20000 x 20000 PNG header would decode to 400 MB)."""
    import struct  # pylint: disable=import-outside-toplevel
    import zlib  # pylint: disable=import-outside-toplevel
    from clid_tf.data import inputs as inputs_lib  # pylint: disable=import-outside-toplevel
    for fmt, options in (("PNG", {}), ("JPEG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {}),
                         ("WEBP", {"lossless": True})):
        data = images.encoded(images.pixels(0, (7, 13, 3)), fmt, **options)
        assert inputs_lib.encoded_size(tf.constant(data)).numpy().tolist() == [7, 13], fmt
        assert inputs_lib.decode_checked(tf.constant(data), 3).shape == (7, 13, 3)
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="declares more than 25000000"):
        inputs_lib.decode_checked(tf.constant(bomb), 1)
