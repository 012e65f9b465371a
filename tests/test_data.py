import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import data
from data.loader import BatchLoader

from conftest import CIFAR_FOLDER, DATA_ROOT


def make_loader(n=100, c=3, size=8, **kw):
    images = torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    labels = torch.arange(n)
    args = dict(batch_size=16, mean=(0.5,) * c, std=(0.25,) * c, shuffle=True, drop_last=True, seed=3)
    return BatchLoader(images, labels, **{**args, **kw})


def test_epoch_is_a_pure_function_of_seed_and_epoch():
    a, b = make_loader(crop_padding=2, flip=True), make_loader(crop_padding=2, flip=True)
    a.set_epoch(4), b.set_epoch(4)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(5)
    assert not torch.equal(next(iter(a))[1], next(iter(b))[1])


def test_start_batch_resumes_mid_epoch():
    loader = make_loader(crop_padding=2, flip=True)
    loader.set_epoch(1)
    full = list(loader)
    loader.set_epoch(1, start_batch=3)
    rest = list(loader)
    assert len(rest) == len(full) - 3
    for (x, y), (xf, yf) in zip(rest, full[3:]):
        assert torch.equal(x, xf) and torch.equal(y, yf)


def test_normalisation_uses_the_given_mean_and_std():
    loader = make_loader(shuffle=False, drop_last=False)
    x, y = next(iter(loader))
    expected = (loader.images[y].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)


def test_sample_spans_a_dataset_stored_class_by_class_and_is_not_augmented():
    loader = make_loader(n=1000, crop_padding=2, flip=True)  # labels = the example's index
    x, index = loader.sample(200)
    assert torch.equal(index, loader.sample(200)[1]) and len(index.unique()) == 200  # a fixed sample
    classes = index // 100  # stored class by class, like an image folder: the first 200 are classes 0 and 1
    assert classes.bincount(minlength=10).min() >= 10
    torch.testing.assert_close(x, (loader.images[index].float() / 255 - 0.5) / 0.25)  # no crop, no flip


def test_crop_and_flip_match_a_per_image_reference():
    """Each augmented image is one of the 5 x 5 x 2 crops (padding 2) and flips of its source image, drawn anew per
    image: both flips and several offsets occur in one batch."""
    loader = make_loader(n=32, crop_padding=2, flip=True)
    loader.set_epoch(0)
    x, y = next(iter(loader))
    padded = torch.nn.functional.pad(loader.images[y], (2, 2, 2, 2))
    drawn = []
    for i in range(len(y)):
        matches = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
                   if torch.allclose(x[i], reference_crop(padded[i], dy, dx, flip), atol=1e-5)]
        assert len(matches) == 1, (i, matches)
        drawn.append(matches[0])
    flips = {flip for _, _, flip in drawn}
    assert flips == {False, True} and len({(dy, dx) for dy, dx, _ in drawn}) > 5


def reference_crop(padded: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """The crop at (dy, dx) of one zero-padded image, mirrored if ``flip``, normalised as make_loader's."""
    crop = padded[:, dy:dy + 8, dx:dx + 8]
    return ((crop.flip(-1) if flip else crop).float() / 255 - 0.5) / 0.25


def test_reflect_padding_crops_from_the_mirrored_edges():
    loader = make_loader(n=32, crop_padding=2, pad_mode="reflect")
    loader.set_epoch(0)
    order, dy, dx, _ = loader._epoch_plan()
    x, y = next(iter(loader))
    raw = loader.images[y].float()
    padded = torch.cat([raw[:, :, 1:3].flip(2), raw, raw[:, :, -3:-1].flip(2)], dim=2)  # rows 2 1 | 0..7 | 6 5
    padded = torch.cat([padded[:, :, :, 1:3].flip(3), padded, padded[:, :, :, -3:-1].flip(3)], dim=3)
    for i in range(len(y)):
        crop = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        torch.testing.assert_close(x[i], (crop / 255 - 0.5) / 0.25)
    assert ((dy[:16] == 0) | (dx[:16] == 0)).any()  # some crops reach into the padding
    with pytest.raises(ValueError, match="data.pad_mode='wrap' is invalid: allowed one of zeros, reflect"):
        make_loader(crop_padding=2, pad_mode="wrap")


def test_shards_are_disjoint_slices_of_the_global_batch():
    single = make_loader(batch_size=16)
    ranks = [make_loader(batch_size=8, rank=r, world_size=2) for r in range(2)]
    for ld in (single, *ranks):
        ld.set_epoch(2)
    assert len(ranks[0]) == len(single)
    for (_, y), (_, y0), (_, y1) in zip(single, *ranks):
        assert torch.equal(torch.cat([y0, y1]), y)


def test_eval_shards_cover_every_example_once():
    ranks = [make_loader(n=37, batch_size=10, shuffle=False, drop_last=False, rank=r, world_size=2) for r in range(2)]
    seen = torch.cat([y for ld in ranks for _, y in ld])
    assert sorted(seen.tolist()) == list(range(37))


def test_subset_is_a_fixed_prefix_of_one_permutation():
    x = torch.arange(50).view(50, 1, 1, 1).to(torch.uint8)
    y = torch.arange(50)
    _, small = data.subset(x, y, 10)
    _, large = data.subset(x, y, 20)
    assert torch.equal(large[:10], small) and len(set(small.tolist())) == 10
    with pytest.raises(ValueError, match="subset size=51"):
        data.subset(x, y, 51)


@pytest.mark.needs_data
def test_mnist_loads_with_its_own_statistics():
    d = data.build(source="mnist", root=str(DATA_ROOT), num_classes=10, in_channels=1, image_size=28,
                   val_split=5000, val_subset=500)
    assert (d.train.num_examples, d.val.num_examples, d.test.num_examples) == (55_000, 500, 10_000)
    assert abs(d.mean[0] - 0.1307) < 1e-3 and abs(d.std[0] - 0.3081) < 1e-3  # of the 55k training images
    x, y = next(iter(d.val))
    assert x.shape == (1000 if len(y) == 1000 else len(y), 1, 28, 28) and 0 <= y.min() and y.max() <= 9


def test_missing_dataset_names_where_it_looked_and_every_way_to_point_at_it(tmp_path):
    for source, layout in (("mnist", "MNIST/raw/"), ("cifar10", "cifar-10-batches-py/")):
        with pytest.raises(data.DatasetNotFoundError) as error:
            data.build(source=source, root=str(tmp_path), num_classes=10, in_channels=1, image_size=28)
        message = str(error.value)
        assert f"no {layout} under data.root='{tmp_path}'" in message and str(tmp_path / layout.rstrip("/")) in message
        assert all(way in message for way in ("data.root=", "DATA_ROOT", "data.download=true"))
    with pytest.raises(data.DatasetNotFoundError, match="train/<class>/.* and test/<class>/.*DATA_ROOT"):
        data.build(source="image_folder", root=str(tmp_path), num_classes=10, in_channels=3, image_size=32)


def test_image_folder_reads_classes_in_sorted_order(tmp_path):
    from torchvision.io import write_png
    for split in ("train", "test"):
        for label, name in enumerate(["cat", "dog"]):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                write_png(torch.full((3, 4, 4), 40 * label + i, dtype=torch.uint8), str(tmp_path / split / name / f"{i}.png"))
    d = data.build(source="image_folder", root=str(tmp_path), num_classes=2, in_channels=3, image_size=4, batch_size=2)
    assert d.test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.test.images[4, 0, 0, 0] == 41


@pytest.mark.slow
@pytest.mark.needs_data
def test_cifar_folder_loads_all_60k_images():
    d = data.build(source="image_folder", root=str(CIFAR_FOLDER), num_classes=10, in_channels=3, image_size=32)
    assert (d.train.num_examples, d.test.num_examples) == (50_000, 10_000)
    assert torch.bincount(d.train.labels).tolist() == [5000] * 10


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any torch operation returns (bytes)."""

    def __init__(self):
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.nbytes = max(self.nbytes, t.numel() * t.element_size())
        return out


def test_channel_stats_are_exact_without_a_float_copy_of_the_set():
    """Under torchrun every process computes them: no float64 copy of the set (8x the uint8 images' bytes)."""
    images = torch.randint(0, 256, (20_000, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with LargestTensor() as largest:
        mean, std = data.channel_stats(images)
    assert largest.nbytes <= images.nbytes // 2, largest.nbytes
    x = images.transpose(0, 1).reshape(3, -1).double() / 255
    assert mean == pytest.approx(x.mean(1).tolist(), rel=1e-14) and std == pytest.approx(x.std(1).tolist(), rel=1e-12)


def flipped(loader, epoch: int) -> torch.Tensor:
    """Whether each image (labels = index) was served mirrored in ``epoch`` (bool (N,)); every image is checked to
    be itself or its mirror."""
    loader.set_epoch(epoch)
    seen = torch.zeros(loader.num_examples, dtype=torch.bool)
    for x, y in loader:
        plain, mirrored = (loader._normalise(loader.images[y]), loader._normalise(loader.images[y].flip(-1)))
        is_mirrored = (x == mirrored).flatten(1).all(1)
        assert (is_mirrored | (x == plain).flatten(1).all(1)).all()
        seen[y] = is_mirrored
    return seen


def test_alternating_flip_mirrors_each_image_in_exactly_one_of_two_consecutive_epochs():
    loader = make_loader(n=96, flip="alternating", drop_last=False)
    epochs = [flipped(loader, e) for e in range(5)]
    for a, b in zip(epochs, epochs[1:]):
        assert torch.equal(a, ~b)
    assert 20 < int(epochs[0].sum()) < 76  # a coin per image, not one for all
    assert torch.equal(flipped(make_loader(n=96, flip="alternating", drop_last=False), 3), epochs[3])  # seeded
    assert not torch.equal(flipped(make_loader(n=96, flip="alternating", drop_last=False, seed=4), 0), epochs[0])
    loader.set_epoch(3)
    full = list(loader)
    loader.set_epoch(3, start_batch=2)
    for (x, y), (xf, yf) in zip(loader, full[2:], strict=True):  # resumed mid-epoch: the same batches
        assert torch.equal(x, xf) and torch.equal(y, yf)


def test_random_flip_is_not_alternating():
    loader = make_loader(n=96, flip=True, drop_last=False)
    a, b = flipped(loader, 0), flipped(loader, 1)
    assert (a == b).any() and (a != b).any()


def test_flip_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="data.flip='sometimes' is invalid: allowed true, false or alternating"):
        make_loader(flip="sometimes")
