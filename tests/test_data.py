import numpy as np
import pytest
import torch
from datasets import fake_fashion_mnist, image_folder

from mobilenets.data import BatchAugment, load_data, read_idx


@pytest.fixture
def fmnist(tmp_path, monkeypatch):
    root = fake_fashion_mnist(tmp_path / "fmnist")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(root))
    return root


def test_fashion_mnist_from_idx(fmnist):
    bundle = load_data("fashion-mnist", input_size=32)
    assert len(bundle.train) == 320 and len(bundle.val) == 80
    image, label = bundle.train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and 0 <= label < 10
    assert bundle.in_chans == 1 and bundle.class_names[0] == "T-shirt/top"
    pre = bundle.preprocess(64)
    assert (pre.crop, pre.size) == (28, 64)


def test_fashion_mnist_val_split(fmnist):
    bundle = load_data("fashion-mnist", input_size=32, val_split=0.25)
    assert (len(bundle.train), len(bundle.val)) == (240, 80)


def test_truncated_idx_is_named(fmnist):
    path = fmnist / "train-images-idx3-ubyte.gz"
    import gzip

    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is truncated or corrupt"):
        read_idx(path)


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist", input_size=32)


def test_image_folder_train_val(tmp_path):
    bundle = load_data(str(image_folder(tmp_path / "d")), input_size=32)
    assert bundle.class_names == ["class_0", "class_1", "class_2"]
    assert bundle.in_chans == 3 and len(bundle.train) == 36
    image, _ = bundle.val[0]
    assert image.shape == (3, 32, 32)


def test_grey_folder_gives_one_channel(tmp_path):
    bundle = load_data(str(image_folder(tmp_path / "d", channels=1)), input_size=32)
    assert bundle.in_chans == 1 and bundle.train[0][0].shape == (1, 32, 32)


def test_single_folder_with_val_split(tmp_path):
    root = image_folder(tmp_path / "d", splits=("",))
    bundle = load_data(str(root), input_size=32, val_split=0.25)
    assert (len(bundle.train), len(bundle.val)) == (27, 9)
    with pytest.raises(ValueError, match="--val-split"):
        load_data(str(root), input_size=32)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "data folder not found"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no class sub-folders"),
        (lambda p: (p / "e" / "a").mkdir(parents=True) or (p / "e" / "b").mkdir() or p / "e", "no images found"),
        (lambda p: image_folder(p / "one", classes=1, splits=("",)), "only one class"),
    ],
)
def test_bad_folders(tmp_path, make, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_data(str(make(tmp_path)), input_size=32, val_split=0.2)


def test_corrupt_and_non_image_files_are_reported_not_fatal(tmp_path, capfd):
    root = image_folder(tmp_path / "d")
    (root / "train" / "class_0" / "notes.txt").write_text("not an image")
    (root / "train" / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    bundle = load_data(str(root), input_size=32)
    assert "ignoring 1 non-image file" in capfd.readouterr().err
    broken = [i for i, (p, _) in enumerate(bundle.train.samples) if p.endswith("broken.png")][0]
    assert bundle.train[broken] is None
    err = capfd.readouterr().err
    assert "warning: cannot read image" in err and "broken.png" in err and "skipped" in err


def test_small_images_warn(tmp_path, capfd):
    bundle = load_data(str(image_folder(tmp_path / "d", size=20)), input_size=64)
    assert bundle.train[0][0].shape == (3, 64, 64)
    assert "smaller than the input size 64" in capfd.readouterr().err


def test_batch_augment_is_per_image_and_keeps_content():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 10:18, 10:18] = 200
    out = BatchAugment(pad=2)(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert (out.sum(dim=(1, 2, 3)) == x[0].sum()).all()  # a shift of at most 2 px keeps the square inside
    assert len({tuple(o.nonzero()[0].tolist()) for o in out}) > 5  # different shifts for different images
    flipped = BatchAugment(flip=True)(torch.arange(28, dtype=torch.uint8).expand(200, 1, 28, 28).contiguous())
    share = (flipped[:, 0, 0, 0] == 27).float().mean()
    assert 0.3 < share < 0.7
    erased = BatchAugment(erase=1.0)(torch.full((50, 1, 28, 28), 255, dtype=torch.uint8))
    holes = (erased == 0).float().mean(dim=(1, 2, 3))
    assert ((holes >= 0.01) & (holes <= 0.4)).all()
    assert torch.equal(BatchAugment()(x), x)


def test_idx_reader_round_trip(tmp_path):
    from datasets import write_idx

    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
