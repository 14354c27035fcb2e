"""Data modules: splits, shapes, augmentation, normalisation and one-line errors, on the bundled digits and on tiny
datasets written in the real on-disk formats (nothing is downloaded)."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from PIL import Image
from sklearn.datasets import load_digits

from lightning_depth.data import CIFAR10DataModule, CIFAR100DataModule, DigitsDataModule, ImageFolderDataModule
from lightning_depth.data.base import stratified_split
from lightning_depth.data.synthetic import write_image_folder, write_synthetic_cifar
from lightning_depth.errors import UsageError


def draws(dataset, index: int, n: int) -> torch.Tensor:
    return torch.stack([dataset[index][0] for _ in range(n)])


def crops_and_flips(clean: torch.Tensor, fill: torch.Tensor, pad: int) -> torch.Tensor:
    """Every image a pad-crop-flip augmentation may produce from `clean`, padding with `fill` per channel; the
    unflipped crops come first."""
    c, h, w = clean.shape
    padded = fill.view(c, 1, 1).repeat(1, h + 2 * pad, w + 2 * pad)
    padded[:, pad : pad + h, pad : pad + w] = clean
    crops = torch.stack([padded[:, y : y + h, x : x + w] for y in range(2 * pad + 1) for x in range(2 * pad + 1)])
    return torch.cat([crops, crops.flip(-1)])


def which(candidates: torch.Tensor, image: torch.Tensor) -> int:
    error = (candidates - image).abs().flatten(1).amax(1)
    assert error.min() < 1e-5, "augmented image is not a padded crop (or its mirror) of the clean image"
    return int(error.argmin())


# --- Digits -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule()
    dm.setup("fit")
    return dm


def test_digits_exposes_classes_and_channels_before_setup():
    dm = DigitsDataModule()
    assert (dm.num_classes, dm.in_channels) == (10, 3)
    assert dm.train_dataset is None


def test_digits_split_is_70_15_15_of_1797(digits):
    sizes = [len(digits.train_dataset), len(digits.val_dataset), len(digits.test_dataset)]
    assert sizes == [1257, 270, 270]


@pytest.mark.parametrize("split", ["train_dataset", "val_dataset", "test_dataset"])
def test_digits_splits_are_stratified(digits, split):
    labels = getattr(digits, split).labels
    counts = Counter(labels.tolist())
    share = len(labels) / 1797
    # load_digits has 174..183 images per class; each split keeps its share of each class to within two images
    # (test is drawn first, then val from the rest, so the training split inherits two roundings).
    all_counts = Counter(load_digits().target.tolist())
    assert sorted(counts) == list(range(10))
    for cls, n in counts.items():
        assert abs(n - share * all_counts[cls]) <= 2


def test_digits_split_is_identical_across_instances(digits):
    other = DigitsDataModule(batch_size=7)
    other.setup("fit")
    for split in ["train_dataset", "val_dataset", "test_dataset"]:
        assert torch.equal(getattr(digits, split).labels, getattr(other, split).labels)
        assert torch.equal(getattr(digits, split).images, getattr(other, split).images)


def test_digits_batches_are_normalised_grey_rgb(digits):
    x, y = next(iter(digits.train_dataloader()))
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.long and 0 <= int(y.min()) and int(y.max()) <= 9
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    train = torch.stack([digits.train_dataset[i][0] for i in range(len(digits.train_dataset))])
    assert abs(train.mean().item()) < 1e-3 and abs(train.std().item() - 1) < 1e-2


@pytest.mark.parametrize("image_size", [8, 16, 64])
def test_digits_image_size(image_size):
    dm = DigitsDataModule(image_size=image_size)
    dm.setup("fit")
    assert dm.val_dataset[0][0].shape == (3, image_size, image_size)


def test_digits_image_size_below_8_is_refused():
    with pytest.raises(ValueError, match="image_size=4"):
        DigitsDataModule(image_size=4)


def test_digits_without_augment_is_deterministic(digits):
    assert torch.equal(draws(digits.train_dataset, 0, 2)[0], draws(digits.train_dataset, 0, 2)[1])


def test_digits_augment_shifts_by_up_to_image_size_over_8_and_never_flips(digits):
    augmented = DigitsDataModule(augment=True)
    augmented.setup("fit")
    clean = digits.train_dataset[3][0]
    fill = ((0 - augmented.train_dataset.mean) / augmented.train_dataset.std).flatten()
    candidates = crops_and_flips(clean, fill, pad=32 // 8)
    seen = {which(candidates, image) for image in draws(augmented.train_dataset, 3, 32)}
    assert len(seen) > 1
    assert all(i < len(candidates) // 2 for i in seen), "digits must not be mirrored"
    assert torch.equal(augmented.val_dataset[0][0], digits.val_dataset[0][0])


def test_digits_loaders_shuffle_only_training(digits):
    assert isinstance(digits.train_dataloader().sampler, torch.utils.data.RandomSampler)
    assert isinstance(digits.val_dataloader().sampler, torch.utils.data.SequentialSampler)
    assert digits.train_dataloader().drop_last is False


def test_stratified_split_is_disjoint_and_complete():
    labels = np.repeat(np.arange(5), 20)
    kept, held_out = stratified_split(labels, 25)
    assert len(held_out) == 25 and sorted(np.concatenate([kept, held_out]).tolist()) == list(range(100))
    assert Counter(labels[held_out].tolist()) == {c: 5 for c in range(5)}


# --- CIFAR, written in the python-pickle format the archives unpack to ------------------------------------------


def written_test_images(root: Path, module) -> np.ndarray:
    """The test images write_synthetic_cifar wrote under ``root``, N×3072 uint8, read straight from the file."""
    return pickle.loads((root / module.folder / module.test_files[0]).read_bytes())[b"data"]


CIFARS = {
    # module, per_file (5 × per_file training images), test images, val_split leaving a stratifiable remainder
    "cifar10": (CIFAR10DataModule, 20, 20, 20),
    "cifar100": (CIFAR100DataModule, 40, 100, 100),
}


@pytest.fixture(params=list(CIFARS))
def cifar(request, tmp_path):
    module, per_file, test, val_split = CIFARS[request.param]
    write_synthetic_cifar(tmp_path, module, per_file=per_file, test=test)
    return module, tmp_path, written_test_images(tmp_path, module), 5 * per_file, val_split


def make(module, root, **kwargs):
    kwargs = {"val_split": 0, "num_workers": 0, **kwargs}
    dm = module(root=str(root), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("module, classes", [(CIFAR10DataModule, 10), (CIFAR100DataModule, 100)])
def test_cifar_exposes_classes_and_channels_before_setup(module, classes):
    dm = module()
    assert (dm.num_classes, dm.in_channels) == (classes, 3)
    assert dm.val_split == 5000 and dm.download is False


def test_cifar_val_split_is_held_out_of_training_and_stratified(cifar):
    module, root, test_data, n_train, val_split = cifar
    dm = make(module, root, val_split=val_split)
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (n_train - val_split, val_split)
    assert len(dm.test_dataset) == len(test_data)
    assert set(Counter(dm.val_dataset.labels.tolist()).values()) == {val_split // dm.num_classes}
    again = make(module, root, val_split=val_split)
    assert torch.equal(dm.val_dataset.images, again.val_dataset.images)


def test_cifar_val_split_0_validates_on_the_test_set(cifar):
    module, root, test_data, n_train, _ = cifar
    dm = make(module, root, val_split=0)
    assert len(dm.train_dataset) == n_train
    assert dm.val_dataset is dm.test_dataset


def test_cifar_val_split_below_one_per_class_is_refused():
    with pytest.raises(ValueError, match="val_split=5"):
        CIFAR10DataModule(val_split=5)


def test_cifar_normalises_per_channel_with_the_standard_statistics(cifar):
    module, root, test_data, _, _ = cifar
    dm = make(module, root)
    mean, std = torch.tensor(module.mean).view(3, 1, 1), torch.tensor(module.std).view(3, 1, 1)
    expected = (torch.from_numpy(test_data[0]).view(3, 32, 32).float() / 255 - mean) / std
    assert torch.allclose(dm.test_dataset[0][0], expected, atol=1e-6)


def test_cifar_batches_have_images_and_labels(cifar):
    module, root, _, _, _ = cifar
    dm = make(module, root, batch_size=16)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.long and 0 <= int(y.min()) and int(y.max()) < dm.num_classes


def test_cifar_training_pads_4_crops_and_flips_while_evaluation_is_fixed(cifar):
    module, root, _, _, _ = cifar
    augmented, clean = make(module, root), make(module, root, augment=False)
    fill = -torch.tensor(module.mean) / torch.tensor(module.std)
    candidates = crops_and_flips(clean.train_dataset[5][0], fill, pad=4)
    seen = {which(candidates, image) for image in draws(augmented.train_dataset, 5, 64)}
    half = len(candidates) // 2
    assert len(seen) > 2 and any(i < half for i in seen) and any(i >= half for i in seen)
    assert torch.equal(*draws(augmented.val_dataset, 2, 2))
    assert torch.equal(*draws(clean.train_dataset, 5, 2))


@pytest.mark.parametrize("module, folder", [(CIFAR10DataModule, "cifar10"), (CIFAR100DataModule, "cifar100")])
def test_cifar_missing_data_is_one_line_naming_the_path_and_download_flag(module, folder, tmp_path):
    root = tmp_path / folder
    dm = module(root=str(root))
    for step in (dm.prepare_data, dm.setup):
        with pytest.raises(UsageError) as err:
            step()
        message = str(err.value)
        assert "\n" not in message and str(root) in message
        assert "--data.init_args.download true" in message and "DigitsDataModule" in message


def test_cifar_truncated_batch_is_a_usage_error_naming_the_file(tmp_path):
    write_synthetic_cifar(tmp_path, per_file=20, test=20)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(UsageError, match="data_batch_3 is unreadable") as err:
        make(CIFAR10DataModule, tmp_path)
    assert "\n" not in str(err.value)


def test_cifar_batch_without_labels_is_a_usage_error(tmp_path):
    write_synthetic_cifar(tmp_path, per_file=20, test=20)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8)}))
    with pytest.raises(UsageError, match="test_batch lacks"):
        make(CIFAR10DataModule, tmp_path)


# --- ImageNet-style folders -------------------------------------------------------------------------------------

CLASSES = ["n01", "n02", "n03"]


@pytest.fixture
def folders(tmp_path) -> Path:
    rng = np.random.default_rng(2)
    for split, per_class in [("train", 4), ("val", 2)]:
        for name in CLASSES:
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                if i == 1:
                    image.convert("L").save(tmp_path / split / name / f"{i}.png")  # grey images become RGB
                else:
                    image.save(tmp_path / split / name / f"{i}.JPEG")
    return tmp_path


def test_synthetic_image_folder_is_read_by_the_imagefolder_module(tmp_path):
    write_image_folder(tmp_path, classes=2, per_class=3, val_per_class=1, size=(80, 60))
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=32, num_workers=0)
    dm.setup("fit")
    assert (dm.num_classes, len(dm.train_dataset), len(dm.val_dataset)) == (2, 6, 2)
    assert dm.train_dataset[0][0].shape == (3, 32, 32)


def folder_module(root: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(str(root), **{"image_size": 32, "num_workers": 0, "batch_size": 4, **kwargs})
    dm.setup("fit")
    return dm


def test_imagefolder_counts_class_folders_in_init(folders):
    dm = ImageFolderDataModule(str(folders))
    assert (dm.num_classes, dm.in_channels, dm.classes) == (3, 3, CLASSES)
    assert dm.train_dataset is None


def test_imagefolder_shapes(folders):
    dm = folder_module(folders)
    x, y = next(iter(dm.train_dataloader()))
    assert type(x) is torch.Tensor and x.shape == (4, 3, 32, 32) and y.dtype == torch.long
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (12, 6, 6)
    assert dm.val_dataset[0][0].shape == (3, 32, 32)


def test_imagefolder_evaluation_is_deterministic_and_training_is_not(folders):
    dm = folder_module(folders)
    assert torch.equal(*draws(dm.val_dataset, 0, 2))
    assert not torch.equal(*draws(dm.train_dataset, 0, 2))


def test_imagefolder_ten_crop_gives_ten_crops_per_test_sample_only(folders):
    dm = folder_module(folders, ten_crop=True)
    crops = dm.test_dataset[0][0]
    assert crops.shape == (10, 3, 32, 32)
    assert torch.equal(crops[5], crops[1].flip(-1)), "crops 5..9 are those of the mirrored image"
    assert torch.equal(crops[4], dm.val_dataset[0][0]), "the centre crop is the single-crop evaluation"
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 10, 3, 32, 32)
    assert next(iter(dm.val_dataloader()))[0].shape == (4, 3, 32, 32)


def test_imagefolder_lighting_shifts_each_channel_by_a_constant(folders):
    plain, lit = folder_module(folders), folder_module(folders, lighting=0.1)
    torch.manual_seed(0)
    a = plain.train_dataset[0][0]
    torch.manual_seed(0)
    b = lit.train_dataset[0][0]
    shift = (b - a).flatten(1)
    assert shift.abs().max() > 1e-4
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)


def test_imagefolder_missing_root_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(UsageError) as err:
        ImageFolderDataModule(str(tmp_path / "imagenet"))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "imagenet" / "train") in message
    assert "--data.init_args.root" in message


def test_imagefolder_val_classes_must_match_train(folders):
    (folders / "val" / CLASSES[0]).rename(folders / "val" / "other")
    with pytest.raises(UsageError, match="same class names"):
        folder_module(folders)


def test_imagefolder_unreadable_image_is_a_usage_error_naming_it(folders):
    (folders / "train" / CLASSES[0] / "0.JPEG").write_bytes(b"not a jpeg")
    dm = folder_module(folders)
    with pytest.raises(UsageError, match="0.JPEG"):
        dm.train_dataset[0]


def test_imagefolder_negative_lighting_is_refused(folders):
    with pytest.raises(ValueError, match="lighting=-0.1"):
        ImageFolderDataModule(str(folders), lighting=-0.1)


# --- The command line -------------------------------------------------------------------------------------------


class Probe(LightningModule):
    def __init__(self, num_classes: int = 0, in_channels: int = 0) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels


class LinkingCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.in_channels", apply_on="instantiate")


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize(
    "name, args, classes",
    [
        ("DigitsDataModule", ["--data.image_size=16", "--data.augment=true"], 10),
        ("CIFAR10DataModule", ["--data.val_split=0", "--data.download=false"], 10),
        ("CIFAR100DataModule", ["--data.batch_size=64"], 100),
        ("ImageFolderDataModule", ["--data.lighting=0.1", "--data.ten_crop=true"], 3),
    ],
)
def test_cli_validates_the_signature_and_links_num_classes_before_setup(name, args, classes, folders):
    if name == "ImageFolderDataModule":
        args = [*args, f"--data.root={folders}"]
    cli = LinkingCLI(
        Probe,
        LightningDataModule,
        subclass_mode_data=True,
        run=False,
        args=["--trainer.logger=false", f"--data=lightning_depth.data.{name}", *args],
    )
    assert (cli.model.num_classes, cli.model.in_channels) == (classes, 3)
