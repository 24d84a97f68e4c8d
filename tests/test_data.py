import numpy as np
import pytest
import torch
from datasets import image_folder, png_header
from PIL import Image
from torch.utils.data import DataLoader, Subset

from mobilenets.adapt import DataFacts
from mobilenets.data import BatchAugment, collate_skipping_none, folder_train_transform, load_data, read_idx


@pytest.fixture
def fmnist(fashion_mnist_dir):
    return fashion_mnist_dir


def test_fashion_mnist_from_idx(fmnist):
    bundle = load_data("fashion-mnist")
    # a twelfth of the training images (5,000 of the real 60,000) chooses the best epoch;
    # the test set is kept for the end
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (294, 26, 80)
    assert not set(bundle.train.indices) & set(bundle.val.indices)
    assert bundle.eval_split()[0] == "test" and bundle.facts().image_size == 28
    image, label = bundle.train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and 0 <= label < 10
    assert bundle.in_chans == 1 and bundle.class_names[0] == "T-shirt/top"
    pre = bundle.preprocess(64)
    assert (pre.crop, pre.size) == (28, 64)


def test_fashion_mnist_val_split(fmnist):
    bundle = load_data("fashion-mnist", val_split=0.25)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (240, 80, 80)


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
        load_data("fashion-mnist")


def test_image_folder_train_val(tmp_path):
    bundle = load_data(str(image_folder(tmp_path / "d")))
    assert bundle.class_names == ["class_0", "class_1", "class_2"]
    assert bundle.in_chans == 3 and len(bundle.train) == 36 and bundle.test is None
    assert bundle.facts() == DataFacts(train_images=36, image_size=40, channels=3)
    bundle.set_transforms(folder_train_transform(32, 0.5, 0.0, 0.0), bundle.preprocess(32, 1.0).image_transform())
    image, _ = bundle.val[0]
    assert image.shape == (3, 32, 32) and bundle.train[0][0].shape == (3, 32, 32)
    assert bundle.eval_split()[0] == "val" and bundle.eval_split("val")[1] is bundle.val
    with pytest.raises(ValueError, match="has no test split"):
        bundle.eval_split("test")


def test_image_folder_test_split_is_kept_for_the_end(tmp_path):
    bundle = load_data(str(image_folder(tmp_path / "d", splits=("train", "val", "test"))))
    assert len(bundle.test) == 36 and bundle.eval_split()[0] == "test"
    assert bundle.eval_split("val") == ("val", bundle.val)


def test_small_images_are_evaluated_whole(tmp_path):
    bundle = load_data(str(image_folder(tmp_path / "d", size=20, per_class=4)))
    small, photo = bundle.preprocess(64, eval_crop=1.0), bundle.preprocess(224)
    assert (small.crop, small.resize) == (64, 64) and (photo.crop, photo.resize) == (224, 256)


def test_folder_flips_follow_the_probability(tmp_path):
    x = torch.arange(32, dtype=torch.uint8).expand(3, 32, 32).contiguous()
    never, always = folder_train_transform(32, 1.0, 0.0, 0.0), folder_train_transform(32, 1.0, 1.0, 0.0)
    assert all(torch.equal(never(x), x) for _ in range(20))
    assert all(torch.equal(always(x), x.flip(-1)) for _ in range(20))


def test_grey_folder_gives_one_channel(tmp_path):
    bundle = load_data(str(image_folder(tmp_path / "d", channels=1)))
    assert bundle.in_chans == 1 and bundle.train[0][0].shape == (1, 40, 40)


def test_single_folder_with_val_split(tmp_path):
    root = image_folder(tmp_path / "d", splits=("",))
    bundle = load_data(str(root), val_split=0.25)
    assert (len(bundle.train), len(bundle.val)) == (27, 9)
    with pytest.raises(ValueError, match="--val-split"):
        load_data(str(root))


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
        load_data(str(make(tmp_path)), val_split=0.2)


def test_corrupt_and_non_image_files_are_reported_not_fatal(tmp_path, capfd):
    root = image_folder(tmp_path / "d")
    (root / "train" / "class_0" / "notes.txt").write_text("not an image")
    (root / "train" / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    bundle = load_data(str(root))
    assert "ignoring 1 non-image file" in capfd.readouterr().err
    broken = [i for i, (p, _) in enumerate(bundle.train.samples) if p.endswith("broken.png")][0]

    def one_epoch() -> list[int]:  # a loader worker process reads the broken file and a good one
        batches = DataLoader(Subset(bundle.train, [broken, 0]), batch_size=2, num_workers=1,
                             collate_fn=collate_skipping_none)
        return [len(labels) for _, labels in batches]

    assert one_epoch() == [1]
    err = capfd.readouterr().err
    assert "warning: cannot read image" in err and "broken.png" in err and "skipped" in err
    # reported once: not again in the next epoch's worker, nor in this process (the BN recompute pass)
    assert one_epoch() == [1] and bundle.train[broken] is None
    assert "broken.png" not in capfd.readouterr().err


def test_a_subset_of_a_folder_spans_its_classes(tmp_path):
    root = image_folder(tmp_path / "d", per_class=20)
    bundle = load_data(str(root), subset=30)  # the files are read class by class; the first 30 were class_0's

    def labels(split):
        return [split.dataset.samples[i][1] for i in split.indices]

    assert set(labels(bundle.train)) == {0, 1, 2} and len(set(labels(bundle.val))) >= 2
    assert labels(load_data(str(root), subset=30).train) == labels(bundle.train)  # seeded
    assert labels(load_data(str(root), subset=30, seed=1).train) != labels(bundle.train)


def test_colour_in_any_class_makes_a_colour_folder(tmp_path):
    root = image_folder(tmp_path / "d", classes=2, per_class=20, channels=1)  # grey classes class_0, class_1
    for split in ("train", "val"):
        (root / split / "colour").mkdir()
        for i in range(6):
            Image.new("RGB", (40, 40), (200, 30, i * 40)).save(root / split / "colour" / f"{i}.png")
    bundle = load_data(str(root))
    assert bundle.class_names == ["class_0", "class_1", "colour"] and bundle.in_chans == 3


def test_hidden_folders_are_not_classes_and_empty_classes_are_refused(tmp_path):
    root = image_folder(tmp_path / "d")
    for split in ("train", "val"):
        (root / split / ".ipynb_checkpoints").mkdir()
        Image.new("RGB", (40, 40)).save(root / split / ".ipynb_checkpoints" / "x.png")
    assert load_data(str(root)).class_names == ["class_0", "class_1", "class_2"]
    for split in ("train", "val"):
        (root / split / "zempty").mkdir()
    with pytest.raises(ValueError, match="class folder.* without images: zempty"):
        load_data(str(root))


def test_val_split_with_a_val_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has val/.*--val-split is for folders without one"):
        load_data(str(image_folder(tmp_path / "d")), val_split=0.5)


def test_a_decompression_bomb_in_a_folder_is_skipped(tmp_path, capfd):
    root = image_folder(tmp_path / "d")
    (root / "train" / "class_0" / "bomb.png").write_bytes(png_header(20_000, 20_000))
    bundle = load_data(str(root))
    bomb = [i for i, (p, _) in enumerate(bundle.train.samples) if p.endswith("bomb.png")][0]
    assert bundle.train[bomb] is None
    err = capfd.readouterr().err
    assert "cannot read image" in err and "bomb.png" in err and "skipped" in err


def test_batch_augment_is_per_image_and_keeps_content():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 10:18, 10:18] = 200
    out = BatchAugment(pad=2)(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert (out.sum(dim=(1, 2, 3)) == x[0].sum()).all()  # a shift of at most 2 px keeps the square inside
    assert len({tuple(o.nonzero()[0].tolist()) for o in out}) > 5  # different shifts for different images
    ramp = torch.arange(28, dtype=torch.uint8).expand(400, 1, 28, 28).contiguous()
    for p in (0.5, 0.2):
        share = (BatchAugment(hflip=p)(ramp)[:, 0, 0, 0] == 27).float().mean()
        assert abs(share - p) < 0.1
    erased = BatchAugment(erase=1.0)(torch.full((50, 1, 28, 28), 255, dtype=torch.uint8))
    holes = (erased == 0).float().mean(dim=(1, 2, 3))
    assert ((holes >= 0.01) & (holes <= 0.4)).all()
    assert torch.equal(BatchAugment()(x), x)


def test_idx_reader_round_trip(tmp_path):
    from datasets import write_idx

    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
