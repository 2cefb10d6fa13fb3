"""Image folders and list files: what is found, in which order, and every bad-input error."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clid_tf.data import image_files
from clid_tf.errors import DataError
from tests.helpers import ROOT
from tests.helpers import checks
from tests.helpers import images

import make_image_folder  # tools/ (pytest.ini's pythonpath)


# --------------------------------------------------------------------------- folders

def test_flat_folder_lists_files_as_keras_does(tmp_path):
    images.write_tree(tmp_path, {'dog': 2, 'cat': 3, 'emu': 1})
    images.write_image(tmp_path / 'cat' / 'deeper' / 'a.PNG', images.pixels(9))  # nested, upper-case ext
    images.write_image(tmp_path / 'cat' / 'z.jpg', images.pixels(10), 'JPEG')
    (tmp_path / 'cat' / 'notes.txt').write_text('not an image')
    images.write_image(tmp_path / '.cache' / 'x.png', images.pixels(11))  # hidden: not a class
    images.write_image(tmp_path / 'top.png', images.pixels(12))  # not in a class folder: ignored
    splits = image_files.folder_splits(tmp_path)
    assert list(splits) == ['train']
    train = splits['train']
    assert train.class_names == ('cat', 'dog', 'emu')
    assert train.root == str(tmp_path)
    import keras  # pylint: disable=import-outside-toplevel
    keras_ds = keras.utils.image_dataset_from_directory(
            str(tmp_path), shuffle=False, image_size=(4, 4), batch_size=None, verbose=False)
    assert list(train.paths) == keras_ds.file_paths
    assert keras_ds.class_names == list(train.class_names)
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 0, 0, 1, 1, 2])
    assert train.labels.dtype == np.int64
    assert list(train.names()) == ['cat/00.png', 'cat/01.png', 'cat/02.png', 'cat/z.jpg',
                                   'cat/deeper/a.PNG', 'dog/00.png', 'dog/01.png', 'emu/00.png']


def test_split_folders_map_val_and_test_onto_train_classes(tmp_path):
    images.write_tree(tmp_path / 'train', {'a': 2, 'b': 2, 'c': 1})
    images.write_tree(tmp_path / 'val', {'c': 1, 'a': 1})  # a subset of the classes
    images.write_tree(tmp_path / 'test', {'b': 2})
    (tmp_path / 'README').write_text('files beside the splits are fine')
    splits = image_files.folder_splits(str(tmp_path))
    assert list(splits) == ['train', 'val', 'test']
    assert all(s.class_names == ('a', 'b', 'c') for s in splits.values())
    np.testing.assert_array_equal(splits['val'].labels, [0, 2])
    np.testing.assert_array_equal(splits['test'].labels, [1, 1])
    assert list(splits['val'].names()) == ['val/a/00.png', 'val/c/00.png']
    assert all(os.path.isabs(p) for p in splits['test'].paths)


def test_train_only_split_folder(tmp_path):
    images.write_tree(tmp_path / 'train', {'a': 1, 'b': 1})
    assert list(image_files.folder_splits(tmp_path)) == ['train']


def _folder_error(path) -> pytest.ExceptionInfo:
    with pytest.raises(DataError) as err:
        image_files.folder_splits(path)
    return err


def test_folder_errors(tmp_path):
    checks.assert_one_line(_folder_error(tmp_path / 'nowhere'), 'nowhere', 'no such folder')
    (tmp_path / 'file').write_text('x')
    checks.assert_one_line(_folder_error(tmp_path / 'file'), 'not a folder')
    empty = tmp_path / 'empty'
    empty.mkdir()
    checks.assert_one_line(_folder_error(empty), str(empty), 'has no class subfolders')
    no_images = tmp_path / 'no_images'
    (no_images / 'a').mkdir(parents=True)
    (no_images / 'b').mkdir()
    (no_images / 'b' / 'x.txt').write_text('x')
    checks.assert_one_line(_folder_error(no_images), 'no image files', '.png', '2 class folders')
    one_class = tmp_path / 'one_class'
    images.write_tree(one_class, {'only': 3})
    (one_class / 'empty_class').mkdir()
    checks.assert_one_line(_folder_error(one_class), 'at least 2 classes', "'only'")


def test_split_folder_errors(tmp_path):
    images.write_tree(tmp_path / 'train', {'a': 1, 'b': 1})
    images.write_tree(tmp_path / 'val', {'a': 1, 'zebra': 1})
    checks.assert_one_line(_folder_error(tmp_path), str(tmp_path / 'val'), 'train/ lacks: zebra',
                    'train classes: a, b')
    os.rename(tmp_path / 'val', tmp_path / 'validation')
    checks.assert_one_line(_folder_error(tmp_path), 'splits train, val, test', 'validation')
    os.rename(tmp_path / 'validation', tmp_path / 'test')
    (tmp_path / 'test' / 'zebra' / '00.png').unlink()
    (tmp_path / 'test' / 'zebra').rmdir()
    (tmp_path / 'test' / 'a' / '00.png').unlink()
    checks.assert_one_line(_folder_error(tmp_path), str(tmp_path / 'test'), 'no image files')


# --------------------------------------------------------------------------- list files

def _list(tmp_path, text: str, name='list.txt') -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_list_with_integer_labels_comments_and_spaces_in_paths(tmp_path):
    images.write_image(tmp_path / 'img' / 'a.png', images.pixels(0))
    images.write_image(tmp_path / 'img' / 'b c.png', images.pixels(1))  # a space in the name
    images.write_image(tmp_path / 'img' / 'd.png', images.pixels(2))
    absolute = images.write_image(tmp_path / 'elsewhere' / 'e.png', images.pixels(3))
    listing = _list(tmp_path, '# path label\n\nimg/a.png 2\n  img/b c.png\t0  \n'
                              f'img/./d.png 2\n{absolute} 1\n')
    files = image_files.read_list(listing, root=tmp_path)
    assert files.class_names == ('0', '1', '2')
    np.testing.assert_array_equal(files.labels, [2, 0, 2, 1])
    assert list(files.paths) == [str(tmp_path / 'img' / 'a.png'), str(tmp_path / 'img' / 'b c.png'),
                                 str(tmp_path / 'img' / 'd.png'), absolute]
    assert list(files.names()) == ['img/a.png', 'img/b c.png', 'img/d.png', 'elsewhere/e.png']


def test_list_with_name_labels_and_given_class_names(tmp_path):
    for name in 'abcd':
        images.write_image(tmp_path / f'{name}.png', images.pixels(0))
    listing = _list(tmp_path, 'a.png shirt\nb.png coat\nc.png shirt\nd.png dress\n')
    files = image_files.read_list(listing, root=tmp_path)
    assert files.class_names == ('coat', 'dress', 'shirt')  # sorted unique names
    np.testing.assert_array_equal(files.labels, [2, 0, 2, 1])
    names_file = _list(tmp_path, 'shirt\ncoat\n\ndress\n', 'classes.txt')
    given = image_files.read_class_names(names_file)
    assert given == ('shirt', 'coat', 'dress')
    files = image_files.read_list(listing, root=tmp_path, class_names=given)
    np.testing.assert_array_equal(files.labels, [0, 1, 0, 2])
    assert files.class_names == given
    ints = _list(tmp_path, 'a.png 1\nb.png 2\n', 'ints.txt')  # integers index given names
    files = image_files.read_list(ints, root=tmp_path, class_names=given)
    assert files.class_names == given and list(files.labels) == [1, 2]


def _list_error(tmp_path, text, **kwargs) -> pytest.ExceptionInfo:
    listing = _list(tmp_path, text)
    with pytest.raises(DataError) as err:
        image_files.read_list(listing, root=kwargs.pop('root', tmp_path), **kwargs)
    return err


def test_list_errors_name_the_file_and_line(tmp_path):
    for name in ('a.png', 'b.png'):
        images.write_image(tmp_path / name, images.pixels(0))
    listing = str(tmp_path / 'list.txt')
    checks.assert_one_line(_list_error(tmp_path, 'a.png 0\n# c\nb.png\n'), listing, 'line 3',
                    "expected 'relative/path label', got 'b.png'")
    checks.assert_one_line(_list_error(tmp_path, 'a.png 0\nb.png cat\n'), 'labels mix integers',
                    "line 1: '0'", "line 2: 'cat'")
    checks.assert_one_line(_list_error(tmp_path, 'a.png 0\nb.png -1\n'), 'line 2',
                    'label -1 is out of range', '1 of 2 labels')
    checks.assert_one_line(_list_error(tmp_path, 'a.png 0\nb.png 3\n', class_names=('x', 'y', 'z')),
                    'line 2', 'label 3 is out of range 0..2 (3 class names)')
    checks.assert_one_line(_list_error(tmp_path, 'a.png x\nb.png w\n', class_names=('x', 'y')),
                    'line 2', "unknown class 'w' (classes: x, y)")
    checks.assert_one_line(_list_error(tmp_path, 'a.png 1\nb.png 1\n'), 'all 2 files have label',
                    'at least 2 classes')
    checks.assert_one_line(_list_error(tmp_path, '# only a comment\n\n'), "no 'relative/path label'")
    checks.assert_one_line(_list_error(tmp_path, 'a.png 0\n', root=tmp_path / 'nope'),
                    'data root', 'missing')
    with pytest.raises(DataError) as err:
        image_files.read_list(tmp_path / 'absent.txt', root=tmp_path)
    checks.assert_one_line(err, 'absent.txt', 'no such file')
    (tmp_path / 'latin1.txt').write_bytes('caf\xe9.png 0\n'.encode('latin-1'))
    with pytest.raises(DataError) as err:
        image_files.read_list(tmp_path / 'latin1.txt', root=tmp_path)
    checks.assert_one_line(err, 'not UTF-8')


def test_a_file_listed_twice_needs_one_label(tmp_path, capsys):
    for name in ('a.png', 'b.png'):
        images.write_image(tmp_path / name, images.pixels(0))
    checks.assert_one_line(_list_error(tmp_path, 'a.png 0\nb.png 1\n./a.png 1\n'), 'line 3',
                           "a.png is listed with two labels, '0' (line 1) and '1'")
    files = image_files.read_list(_list(tmp_path, 'a.png 0\nb.png 1\na.png 0\n'),
                                  root=tmp_path)
    assert len(files.paths) == 3  # counted twice, as listed
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith('warning: list file') and \
        '1 line(s) repeat a file with the same label' in out[0] and \
        'line 3 repeats line 1' in out[0], out


def test_missing_listed_files_are_counted(tmp_path):
    images.write_image(tmp_path / 'a.png', images.pixels(0))
    text = 'a.png 0\n' + ''.join(f'gone/{i}.png 1\n' for i in range(5))
    checks.assert_one_line(_list_error(tmp_path, text), '5 of 6 listed files are missing',
                    str(tmp_path), 'e.g. line 2: gone/0.png, line 3: gone/1.png')


def test_class_names_file_errors(tmp_path):
    with pytest.raises(DataError) as err:
        image_files.read_class_names(_list(tmp_path, 'a\nb\na\n'))
    checks.assert_one_line(err, 'more than once: a')
    with pytest.raises(DataError) as err:
        image_files.read_class_names(_list(tmp_path, 'a\n'))
    checks.assert_one_line(err, 'at least 2 names')


# --------------------------------------------------------------------------- image checks

def test_check_gives_shape_and_channels(tmp_path):
    images.write_tree(tmp_path / 'grey', {'a': 2, 'b': 2}, shape=(7, 4, 1))
    files = image_files.folder_splits(tmp_path / 'grey')['train']
    kept, shape, notes = image_files.check_images(files)
    assert shape == (7, 4, 1) and notes == []
    np.testing.assert_array_equal(kept.paths, files.paths)
    # one colour image makes every image 3 channels; --image_size sets H and W
    images.write_image(tmp_path / 'grey' / 'b' / 'colour.png', images.pixels(5, (7, 4, 3)))
    files = image_files.folder_splits(tmp_path / 'grey')['train']
    assert image_files.check_images(files)[1] == (7, 4, 3)
    assert image_files.check_images(files, image_size=16)[1] == (16, 16, 3)


@pytest.mark.parametrize('fmt', ['GIF', 'BMP'])
def test_grey_gif_and_bmp_decode_to_three_channels(tmp_path, fmt):
    images.write_tree(tmp_path, {'a': 1, 'b': 1}, shape=(7, 4, 1))
    images.write_image(tmp_path / 'b' / f'grey.{fmt.lower()}', images.pixels(3, (7, 4, 1)), fmt)
    files = image_files.folder_splits(tmp_path)['train']
    assert image_files.check_images(files)[1] == (7, 4, 3)


def test_split_shapes_agree_and_mixed_sizes_need_image_size(tmp_path):
    images.write_tree(tmp_path / 'train', {'a': 2, 'b': 2}, shape=(8, 8, 1))
    images.write_tree(tmp_path / 'test', {'a': 1}, shape=(8, 8, 3))
    splits = image_files.folder_splits(tmp_path)
    kept, shape, _ = image_files.check_splits(splits)
    assert shape == (8, 8, 3)  # the colour test images decide C for every split
    assert set(kept) == {'train', 'test'}
    odd = images.write_image(tmp_path / 'test' / 'b' / 'odd.png', images.pixels(7, (5, 9, 3)))
    splits = image_files.folder_splits(tmp_path)
    with pytest.raises(DataError) as err:
        image_files.check_splits(splits)
    checks.assert_one_line(err, 'different sizes (height x width)',
                    f"{splits['train'].paths[0]} is 8x8", f'{odd} is 5x9', '--image_size')
    assert image_files.check_splits(splits, image_size=6)[1] == (6, 6, 3)


def _bad_files(folder) -> dict[str, str]:
    """Unusable files of each kind, written to folder/a/; name -> expected reason."""
    image = images.pixels(1, (16, 16, 3))
    png, jpeg, gif = images.encoded(image, 'PNG'), images.encoded(image, 'JPEG'), images.encoded(image, 'GIF')
    bmp = images.encoded(image, 'BMP')
    contents = {
            'text.png': (b'this is no image', 'unreadable'),
            'empty.jpg': (b'', 'unreadable'),
            'cut.png': (png[:len(png) // 2], 'truncated'),
            'cut.jpg': (jpeg[:-40], 'truncated'),
            'cut.gif': (gif[:-2], 'truncated'),
            'cut.bmp': (bmp[:-100], 'truncated'),
            'cut.webp': (images.encoded(image, 'WEBP')[:-20], 'unreadable'),
            'tiff.png': (images.encoded(image, 'TIFF'), 'TIFF format'),
            'bits.bmp': (_one_bit_bmp(), '1-bit BMP'),
    }
    os.makedirs(os.path.join(folder, 'a'), exist_ok=True)
    for name, (data, _) in contents.items():
        with open(os.path.join(folder, 'a', name), 'wb') as f:
            f.write(data)
    return {name: reason for name, (_, reason) in contents.items()}


def _one_bit_bmp() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(images.pixels(2, (16, 16, 1))[..., 0]).convert('1').save(buffer, format='BMP')
    return buffer.getvalue()


def test_header_scan_agrees_with_tensorflow_decode(tmp_path):
    """Every file the scan accepts decodes in TensorFlow; every one it rejects does not."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    reasons = _bad_files(tmp_path)
    image = images.pixels(3, (16, 16, 3))
    good = {'ok.png': images.encoded(image, 'PNG'), 'ok.jpg': images.encoded(image, 'JPEG'),
            'ok.gif': images.encoded(image, 'GIF'), 'ok.bmp': images.encoded(image, 'BMP'),
            'webp.jpg': images.encoded(image, 'WEBP'),  # any name: the content decides
            'padded.jpg': images.encoded(image, 'JPEG') + b'\0' * 64,
            'grey.png': images.encoded(image[..., 0], 'PNG'), 'grey16.png': images.encoded(
                    image[..., 0].astype(np.uint16) * 257, 'PNG'),
            'cmyk.jpg': _cmyk_jpeg(image)}
    for name, data in good.items():
        (tmp_path / 'a' / name).write_bytes(data)
    paths = sorted(str(p) for p in (tmp_path / 'a').iterdir())
    scan = image_files.scan_headers(paths)
    for path, problem, grey in zip(paths, scan.problems, scan.grey):
        name = os.path.basename(path)
        data = open(path, 'rb').read()
        channels = 1 if grey else 3
        try:
            tf.io.decode_image(data, channels=channels, expand_animations=False).numpy()
            decodes = True
        except (tf.errors.InvalidArgumentError, ValueError):
            decodes = False
        if name in reasons:
            assert problem and reasons[name] in problem, (name, problem)
            assert not decodes, name
        else:
            assert problem is None and decodes, (name, problem)
            assert grey == name.startswith('grey'), name
    assert (scan.height[scan.problems == None] == 16).all()  # noqa: E711


def _cmyk_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).convert('CMYK').save(buffer, format='JPEG')
    return buffer.getvalue()


def test_few_bad_files_are_skipped_with_a_counted_warning(tmp_path):
    images.write_tree(tmp_path, {'a': 60, 'b': 60})
    bad = [images.write_image(tmp_path / 'b' / 'zz.png', images.pixels(0))]
    with open(bad[0], 'wb') as f:
        f.write(b'garbage')
    files = image_files.folder_splits(tmp_path)['train']
    kept, shape, notes = image_files.check_images(files)  # 1 of 121 files: under 1%
    assert len(kept.paths) == 120 and bad[0] not in kept.paths and shape == (6, 5, 3)
    assert np.bincount(kept.labels).tolist() == [60, 60]
    assert len(notes) == 1 and '\n' not in notes[0]
    assert 'skipped 1 of 121 image files' in notes[0] and bad[0] in notes[0]
    with pytest.raises(DataError) as err:  # the same file is too many when none may be bad
        image_files.check_images(files, max_bad_files=0)
    checks.assert_one_line(err, '1 of 121 image files are unreadable or corrupt', 'at most 0 files')


def test_many_bad_files_are_an_error(tmp_path):
    images.write_tree(tmp_path, {'a': 3, 'b': 3})
    reasons = _bad_files(tmp_path)
    files = image_files.folder_splits(tmp_path)['train']
    with pytest.raises(DataError) as err:
        image_files.check_images(files)
    listed = [n for n in reasons if n.endswith(image_files.IMAGE_EXTENSIONS)]  # not .webp
    checks.assert_one_line(err, f'{len(listed)} of {len(listed) + 6} image files are unreadable',
                    'at most 100 files and 1% of them', 'e.g.')


def test_skipping_that_empties_a_class_or_split(tmp_path):
    images.write_tree(tmp_path / 'train', {'a': 200, 'b': 1, 'c': 1})
    images.write_tree(tmp_path / 'val', {'a': 1})
    for path in (tmp_path / 'train' / 'c' / '00.png', tmp_path / 'val' / 'a' / '00.png'):
        path.write_bytes(b'broken')
    splits = image_files.folder_splits(tmp_path)
    with pytest.raises(DataError) as err:
        image_files.check_splits(splits)
    checks.assert_one_line(err, 'the val split has no usable image files')
    del splits['val']
    with pytest.raises(DataError) as err:  # c's only image is skipped: c cannot be learnt
        image_files.check_splits(splits)
    checks.assert_one_line(err, '1 of 3 classes have no usable training images (c)',
                    'remove those class folders')
    (tmp_path / 'train' / 'b' / '00.png').write_bytes(b'broken')
    with pytest.raises(DataError) as err:
        image_files.check_splits(image_files.folder_splits(tmp_path / 'train'))
    checks.assert_one_line(err, 'at least 2 classes are needed, found 1')


def test_image_size_must_be_positive(tmp_path):
    images.write_tree(tmp_path, {'a': 1, 'b': 1})
    with pytest.raises(DataError) as err:
        image_files.check_images(image_files.folder_splits(tmp_path)['train'], image_size=0)
    checks.assert_one_line(err, 'image_size must be a positive')


# --------------------------------------------------------------------------- the tool

def test_make_image_folder_writes_a_readable_learnable_tree(tmp_path):
    make_image_folder.write_tree(str(tmp_path), {'train': 200, 'val': 0, 'test': 40},
                                 num_classes=4, size=16, channels=3, fmt='png', seed=1,
                                 workers=2)
    splits = image_files.folder_splits(tmp_path)
    assert list(splits) == ['train', 'test']
    assert splits['train'].class_names == ('one', 'three', 'two', 'zero')  # sorted names
    assert np.bincount(splits['train'].labels).tolist() == [50, 50, 50, 50]
    kept, shape, notes = image_files.check_splits(splits)
    assert shape == (16, 16, 3) and notes == [] and len(kept['test'].paths) == 40
    # the files hold what render() gives for (seed, index): train image 6 is a 'two'
    make_image_folder._load_digits(16)
    expected = make_image_folder.render(0, 200, num_classes=4, channels=3, seed=1 * 3)
    path = os.path.join(tmp_path, 'train', 'two', '0000006.png')
    np.testing.assert_array_equal(np.asarray(Image.open(path)), expected[6])

    def glyphs(files):  # distance of each pixel from the background (corner) colour
        images = np.stack([np.asarray(Image.open(p), np.float32) for p in files.paths])
        background = images[:, [0, 0, -1, -1], [0, -1, 0, -1]].mean(1)[:, None, None]
        distance = np.abs(images - background).sum(-1).reshape(len(images), -1)
        return distance / np.linalg.norm(distance, axis=1, keepdims=True)
    train, test = glyphs(splits['train']), glyphs(splits['test'])
    nearest = np.argmin(((test[:, None] - train[None]) ** 2).sum(-1), axis=1)
    predicted = splits['train'].labels[nearest]  # 1-nearest neighbour
    assert (predicted == splits['test'].labels).mean() > 0.8  # chance: 0.25


def test_make_image_folder_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / 'keep.txt').write_text('earlier work')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'make_image_folder.py'),
                           f'--output_dir={tmp_path}', '--num_images=10'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith('error: --output_dir')
    assert os.listdir(tmp_path) == ['keep.txt']


def test_file_checks_run_before_tensorflow_is_imported():
    code = ('import sys; from clid_tf.data import image_files; from clid_tf.data.sources import tfds; '
            "assert not [m for m in sys.modules if m.startswith('tensorflow')], 'imported'")
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --------------------------------------------------------------------------- hostile files

def test_huge_integer_labels_are_refused_by_line_without_overflow(tmp_path):
    """A label of 10**12 would make 10**12 class names; 10**30 overflows int64."""
    images.write_tree(tmp_path, {'a': 2})
    for label in (10**12, 10**30):
        err = _list_error(tmp_path, f'a/00.png 0\na/01.png {label}\n')
        checks.assert_one_line(err, f'line 2: label {label} would make', 'classes of 2 files')


def test_links_are_not_followed_and_fifos_never_block(tmp_path):
    """A class folder that is a link is refused; a linked image file and a FIFO named like
    an image are skipped as unusable (the scan never opens the FIFO for reading, so it
    cannot block), each named in the counted warning."""
    outside = tmp_path / 'outside'
    images.write_tree(outside, {'c': 2})
    root = tmp_path / 'data'
    images.write_tree(root, {'a': 30, 'b': 30})
    os.symlink(outside / 'c', root / 'c')
    err = _folder_error(root)
    checks.assert_one_line(err, 'data: c is a symbolic link to a folder; links are not followed')
    (root / 'c').unlink()
    os.symlink(outside / 'c' / '00.png', root / 'a' / 'linked.png')
    os.mkfifo(root / 'b' / 'fifo.png')
    splits = image_files.folder_splits(root)
    kept, _, notes = image_files.check_splits(splits, max_bad_files=5, max_bad_fraction=0.1)
    assert len(kept['train'].paths) == 60
    assert 'linked.png: is a symbolic link' in notes[0] and 'fifo.png: is not a regular file' in notes[0]


def test_a_decompression_bomb_is_skipped_by_its_header(tmp_path):
    """A small PNG that declares 9500 x 9500 pixels is never decoded: the header scan
    skips it as larger than MAX_IMAGE_PIXELS."""
    root = tmp_path / 'data'
    images.write_tree(root, {'a': 30, 'b': 30})
    bomb = root / 'a' / 'bomb.png'
    Image.new('L', (9500, 9500)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 200_000
    kept, _, notes = image_files.check_splits(image_files.folder_splits(root),
                                              max_bad_files=5, max_bad_fraction=0.1)
    assert len(kept['train'].paths) == 60
    assert f'bomb.png: 9500x9500 pixels, more than the {image_files.MAX_IMAGE_PIXELS}' in notes[0]


def test_listed_files_outside_the_data_root_are_said(tmp_path, capsys):
    images.write_tree(tmp_path / 'root', {'a': 1, 'b': 1})
    elsewhere = images.write_image(tmp_path / 'elsewhere' / 'x.png', images.pixels(3))
    listed = image_files.read_list(_list(tmp_path, f'a/00.png 0\nb/00.png 1\n{elsewhere} 1\n'),
                                   root=tmp_path / 'root')
    assert listed.outside_root().tolist() == [False, False, True]
    out = capsys.readouterr().out
    assert '1 of 3 listed files lie outside the data root' in out and 'line 3' in out
