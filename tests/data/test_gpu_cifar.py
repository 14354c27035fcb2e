"""GPUCIFAR10DataModule: torchvision's pad-crop-flip semantics and distribution, CIFAR10DataModule's split and
normalisation, batches already on the device (the CPU here), determinism under the global RNG, DDP shards, and a
Lightning fit. Everything runs on small CIFAR-format files the tests write; nothing is downloaded."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torchvision.transforms import v2

from lightning_depth.callbacks import EpochReseed
from lightning_depth.data import CIFAR10DataModule, CIFAR100DataModule
from lightning_depth.data.gpu_cifar import DeviceBatches, GPUCIFAR10DataModule, GPUCIFAR100DataModule, crop_flip
from lightning_depth.data.synthetic import write_synthetic_cifar
from lightning_depth.errors import UsageError
from lightning_depth.models import ResNet
from lightning_depth.module import ImageClassifier

PAD = 4


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    # 5 × 20 training images and 40 test images, labels cycling through the 10 classes.
    return write_synthetic_cifar(tmp_path_factory.mktemp("cifar"), per_file=20, test=40)


def make(root, **kwargs) -> GPUCIFAR10DataModule:
    dm = GPUCIFAR10DataModule(root=str(root), **{"val_split": 0, "batch_size": 16, **kwargs})
    dm.setup("fit")
    return dm


def torchvision_candidates(image: torch.Tensor, mean, std) -> torch.Tensor:
    """Every output of torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip + scale + Normalize for one
    uint8 image, built with torchvision's own functional ops: index (dy * 9 + dx) * 2 + flipped."""
    padded = v2.functional.pad(image, [PAD] * 4, fill=0)  # pads the uint8 image with 0 before normalisation
    out = []
    for dy in range(2 * PAD + 1):
        for dx in range(2 * PAD + 1):
            crop = v2.functional.crop(padded, dy, dx, 32, 32)
            for flipped in (crop, v2.functional.horizontal_flip(crop)):
                x = v2.functional.to_dtype(flipped, torch.float32, scale=True)
                out.append(v2.functional.normalize(x, list(mean), list(std)))
    return torch.stack(out)


def identify(candidates: torch.Tensor, x: torch.Tensor) -> int:
    error = (candidates - x).abs().flatten(1).amax(1)
    assert error.min() < 1e-5, "not a pad-crop-flip of the clean image"
    return int(error.argmin())


# --- shapes, devices, the CPU module's split and normalisation ----------------------------------------------------


def test_exposes_classes_and_channels_before_setup():
    assert (GPUCIFAR10DataModule.num_classes, GPUCIFAR10DataModule.in_channels) == (10, 3)
    assert GPUCIFAR100DataModule.num_classes == 100


def test_batches_are_float_images_and_int64_labels_on_the_device(root):
    dm = make(root)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert dm.device == torch.device("cpu")  # no GPU here: the same code on CPU tensors
    assert len(loader) == len(batches) == math.ceil(100 / 16)
    x, y = batches[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and x.device == dm.device
    assert y.shape == (16,) and y.dtype == torch.int64 and y.device == dm.device
    assert len(batches[-1][1]) == 100 - 16 * 6
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(i % 10 for i in range(100))


def test_evaluation_batches_equal_the_cpu_modules(root):
    gpu = make(root, val_split=20)
    cpu = CIFAR10DataModule(root=str(root), val_split=20, batch_size=16, num_workers=0)
    cpu.setup("fit")
    for ours, theirs in ((gpu.val_dataloader(), cpu.val_dataloader()), (gpu.test_dataloader(), cpu.test_dataloader())):
        pairs = list(zip(ours, theirs, strict=True))
        for (x, y), (cx, cy) in pairs:
            assert torch.equal(y, cy)
            torch.testing.assert_close(x, cx, rtol=0, atol=0)
    assert len(gpu.train_batches.labels) == 80


def test_val_split_0_validates_on_the_test_set_with_one_copy(root):
    dm = make(root)
    assert dm.val_dataloader() is dm.test_dataloader()


def test_cifar100_variant_reads_its_format(tmp_path):
    write_synthetic_cifar(tmp_path, CIFAR100DataModule, per_file=40, test=100)
    dm = GPUCIFAR100DataModule(root=str(tmp_path), val_split=0, batch_size=50)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 3, 32, 32) and int(y.max()) < 100


def test_auto_device_falls_back_to_cpu_and_cuda_without_gpu_is_one_line(root, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert make(root, device="auto").device == torch.device("cpu")
    with pytest.raises(UsageError, match="no CUDA GPU"):
        make(root, device="cuda")
    with pytest.raises(ValueError, match="device='gpu0'"):
        GPUCIFAR10DataModule(root=str(root), device="gpu0")


def test_missing_data_is_the_cpu_modules_one_line_error(tmp_path):
    with pytest.raises(UsageError, match="CIFAR-10 not found"):
        GPUCIFAR10DataModule(root=str(tmp_path)).setup("fit")


# --- augmentation: torchvision's semantics and distribution -------------------------------------------------------


def test_crop_flip_equals_torchvision_for_every_offset_and_flip(root):
    dm = make(root)
    image = dm.train_batches.images[:1]
    candidates = torchvision_candidates(image[0], CIFAR10DataModule.mean, CIFAR10DataModule.std)
    index = torch.arange(81 * 2)
    dy, dx, flip = index // 2 // 9, index // 2 % 9, index % 2 == 1
    ours = crop_flip(image.expand(len(index), -1, -1, -1), dy, dx, flip, PAD)
    ours = (ours.float().div_(255) - dm.train_batches.mean) / dm.train_batches.std
    torch.testing.assert_close(ours, candidates, rtol=0, atol=1e-6)


def test_padding_is_zero_pixels_normalised_like_torchvision(root):
    dm = make(root)
    image = dm.train_batches.images[:1]
    # The window at offset (0, 0) starts in the padding: its first 4 rows are padded pixels.
    x = crop_flip(image, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), PAD)
    x = (x.float().div_(255) - dm.train_batches.mean) / dm.train_batches.std
    expected = ((0 - torch.tensor(CIFAR10DataModule.mean)) / torch.tensor(CIFAR10DataModule.std)).view(3, 1, 1)
    torch.testing.assert_close(x[0, :, :PAD, :], expected.expand(3, PAD, 32), rtol=0, atol=1e-6)


def test_offsets_are_uniform_over_9x9_and_half_the_images_flip(root):
    # Ten images labelled by their index, so each augmented output names the image it came from; outputs are
    # mapped back to pixels and looked up among torchvision's crops of that image.
    clean = make(root).train_batches.images[:10]
    mean, std = torch.tensor(CIFAR10DataModule.mean), torch.tensor(CIFAR10DataModule.std)
    loader = DeviceBatches(clean, torch.arange(10), mean, std, batch_size=10, shuffle=True, pad=PAD, flip=True)
    lookup = []
    for image in clean:
        padded = v2.functional.pad(image, [PAD] * 4, fill=0)
        crops = {}
        for position in range(81):
            crop = v2.functional.crop(padded, position // 9, position % 9, 32, 32)
            crops[crop.numpy().tobytes()] = (position, 0)
            crops[v2.functional.horizontal_flip(crop).numpy().tobytes()] = (position, 1)
        lookup.append(crops)
    torch.manual_seed(0)
    seen = []
    for _ in range(100):
        for x, y in loader:
            pixels = (x * std.view(3, 1, 1) + mean.view(3, 1, 1)).mul_(255).round_().to(torch.uint8)
            seen += [lookup[int(i)][p.numpy().tobytes()] for p, i in zip(pixels, y)]
    offsets = Counter(position for position, _ in seen)
    flips = sum(flipped for _, flipped in seen) / len(seen)
    assert len(offsets) == 81, "every one of the 9×9 crop positions occurs"
    expected = len(seen) / 81
    chi2 = sum((offsets[k] - expected) ** 2 / expected for k in range(81))
    assert chi2 < 124  # 80 degrees of freedom: p = 0.001
    assert abs(flips - 0.5) < 4 * math.sqrt(0.25 / len(seen))


def test_torchvision_outputs_lie_in_the_set_ours_draws_from(root):
    dm = make(root)
    image = dm.train_batches.images[3]
    mean, std = CIFAR10DataModule.mean, CIFAR10DataModule.std
    candidates = torchvision_candidates(image, mean, std)
    pipeline = v2.Compose([v2.RandomCrop(32, padding=PAD), v2.RandomHorizontalFlip(),
                           v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    torch.manual_seed(0)
    for _ in range(50):
        identify(candidates, pipeline(image))


def test_augment_false_serves_clean_images(root):
    dm = make(root, augment=False)
    torch.manual_seed(0)
    x, y = next(iter(dm.train_dataloader()))
    cpu = CIFAR10DataModule(root=str(root), val_split=0, augment=False, num_workers=0)
    cpu.setup("fit")
    clean = torch.stack([cpu.train_dataset[i][0] for i in range(100)])
    for image in x:
        assert ((clean - image).abs().flatten(1).amax(1) < 1e-6).any()


# --- randomness: the global RNG, drawn lazily; DDP shards --------------------------------------------------------


def test_an_epoch_is_a_function_of_the_global_seed(root):
    loader = make(root).train_dataloader()
    torch.manual_seed(1)
    a = list(loader)
    torch.manual_seed(1)
    b = list(loader)
    torch.manual_seed(2)
    c = list(loader)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])


def test_draws_happen_at_the_first_batch_not_when_the_iterator_is_made(root):
    # Lightning makes the first epoch's iterator before the epoch-start hooks that reseed the RNG.
    loader = make(root).train_dataloader()
    iterator = iter(loader)
    torch.manual_seed(5)
    first = next(iterator)
    torch.manual_seed(5)
    assert torch.equal(next(iter(loader))[0], first[0])


def test_ddp_ranks_take_disjoint_equal_shares_of_rank_0s_permutation(root, monkeypatch):
    loader = make(root, batch_size=8).train_dataloader()
    monkeypatch.setattr(DeviceBatches, "_rank0_seed", lambda self: 7)  # what the broadcast delivers
    shards = {}
    for rank in range(3):
        monkeypatch.setattr(DeviceBatches, "_world", lambda self, r=rank: (r, 3))
        torch.manual_seed(100 + rank)  # EpochReseed seeds every rank differently
        shards[rank] = loader._order()
        assert len(loader) == math.ceil(34 / 8)
    assert {len(s) for s in shards.values()} == {34}  # 100 images padded to 102
    everything = torch.cat(list(shards.values()))
    assert set(everything.tolist()) == set(range(100)) and len(everything) == 102
    monkeypatch.setattr(DeviceBatches, "_rank0_seed", lambda self: 8)
    monkeypatch.setattr(DeviceBatches, "_world", lambda self: (0, 3))
    assert not torch.equal(loader._order(), shards[0])


# --- in a Lightning fit --------------------------------------------------------------------------------------------


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def fit(root, epochs: int) -> list[float]:
    seed_everything(0)
    model = ImageClassifier(ResNet(depth=8, stem="cifar", num_classes=10))
    losses = Losses()
    trainer = Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                      num_sanity_val_steps=0, callbacks=[EpochReseed(), losses])
    trainer.fit(model, GPUCIFAR10DataModule(root=str(root), val_split=0, batch_size=25))
    return losses.values


def test_lightning_fits_with_it(root):
    losses = fit(root, epochs=1)
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


@pytest.mark.slow  # two short fits
def test_reseeded_runs_repeat_batch_for_batch(root):
    first = fit(root, epochs=2)
    assert len(first) == 8
    assert fit(root, epochs=2) == first
