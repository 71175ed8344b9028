"""Image-classification data for ``focalfast train``: an ImageFolder reader and a generated default.

Both give batches of ``images [B, 3, S, S]`` (uint8 or float in [0, 1]) and ``labels [B]`` through
``Loader.batches(epoch, start)``. The order of every epoch and every random augmentation is a
function of ``(seed, epoch, sample index)``, so a run resumed from a checkpoint sees exactly the
batches that an uninterrupted run would have seen. With several training processes, process
``rank`` of ``world_size`` takes images ``rank, rank + world_size, ...`` of every batch: together
they see the batches, and the very pixels, of one process.

* ``Shapes``: four generated classes (circle, square, triangle, cross) with random position, size,
  a small rotation, colours and noise; rendered in batches on the training device; needs no download.
* ``ImageFolder``: ``root/<class>/<image>`` (or ``root/train/<class>/...`` and ``root/val/<class>/...``),
  decoded with PIL; random resized crop + horizontal flip for training, centre crop for evaluation.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
EVAL_CROP = 0.875  # evaluation: the centre square of side 0.875 * min(height, width)


class DataError(ValueError):
    """The data cannot be used: a missing or empty directory, an unreadable image; the message says which."""


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (decorrelated by multiplying with large odd numbers)."""
    return (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (1 << 63)


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> Tensor:
    """The training order of ``epoch``: a permutation of ``range(num_samples)``."""
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(num_samples, generator=generator)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``[B, 3, H, W]`` uint8 (0..255) or float (0..1) -> float32 ``(x - mean) / std`` per channel."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------
# Generated shapes
# ---------------------------------------------------------------------------------------------

class Shapes:
    """``num_samples`` generated images of one of four shapes; the label is the shape.

    Every sample's geometry and colours are drawn once from ``seed`` and ``split``; ``render`` draws
    a batch of them at ``image_size`` on any device, adding pixel noise from ``noise_seed``.
    """

    classes = SHAPE_CLASSES
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self, num_samples: int, image_size: int, seed: int = 0, split: str = "train"):
        if not isinstance(num_samples, int) or num_samples < 1:
            raise DataError(f"num_samples: expected a positive int, got {num_samples!r}")
        if split not in ("train", "val"):
            raise DataError(f"split: expected 'train' or 'val', got {split!r}")
        self.num_samples = num_samples
        self.image_size = image_size
        g = torch.Generator().manual_seed(sample_seed(seed, 0 if split == "train" else 1, -2))
        n = num_samples

        def uniform(low, high, *shape):
            return low + (high - low) * torch.rand(n, *shape, generator=g)

        self.labels = torch.randint(len(self.classes), (n,), generator=g)
        self.center = uniform(-0.45, 0.45, 2)        # in [-1, 1] image coordinates
        self.radius = uniform(0.45, 0.65)            # circumradius, fraction of the half-width
        self.angle = uniform(-0.3, 0.3)              # radians, about +-17 degrees
        dark, light = uniform(0.0, 0.35, 3), uniform(0.65, 1.0, 3)
        self.foreground, self.background = light, dark  # a light shape on a dark background

    def __len__(self) -> int:
        return self.num_samples

    def render(self, indices: Tensor, device, noise_seed: int,
               part: Optional[Tuple[Tensor, int]] = None) -> Tuple[Tensor, Tensor]:
        """Images ``[B, 3, S, S]`` float in [0, 1] and labels ``[B]`` on ``device`` for ``indices``.

        ``part = (rows, batch_size)``: ``indices`` are these rows of a batch of ``batch_size`` images,
        and get the noise that rendering the whole batch would give them.
        """
        device = torch.device(device)
        indices = indices.cpu()
        S = self.image_size

        def take(t):
            return t[indices].to(device)

        center, radius, angle = take(self.center), take(self.radius), take(self.angle)
        labels = take(self.labels)
        axis = (torch.arange(S, device=device, dtype=torch.float32) + 0.5) / S * 2 - 1
        x = axis.view(1, 1, S) - center[:, 0].view(-1, 1, 1)
        y = axis.view(1, S, 1) - center[:, 1].view(-1, 1, 1)
        cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
        r = radius.view(-1, 1, 1)
        u, v = (x * cos + y * sin) / r, (y * cos - x * sin) / r  # shape frame: circumradius 1

        circle = u * u + v * v <= 1.0
        square = torch.maximum(u.abs(), v.abs()) <= 0.75
        # an equilateral triangle: inside the three edges at distance 0.5 along normals 120 deg apart
        edges = [u * math.cos(a) + v * math.sin(a) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        triangle = torch.stack(edges).amax(0) <= 0.5
        cross = ((u.abs() <= 0.28) & (v.abs() <= 1.0)) | ((v.abs() <= 0.28) & (u.abs() <= 1.0))
        masks = torch.stack([circle, square, triangle, cross], 1)  # [B, 4, S, S]
        mask = masks.gather(1, labels.view(-1, 1, 1, 1).expand(-1, 1, S, S)).float()

        fg, bg = take(self.foreground).view(-1, 3, 1, 1), take(self.background).view(-1, 3, 1, 1)
        images = bg + (fg - bg) * mask
        g = torch.Generator(device=device).manual_seed(noise_seed)
        rows, batch_size = part if part is not None else (None, images.shape[0])
        noise = torch.randn((batch_size, *images.shape[1:]), generator=g, device=device)
        if rows is not None:
            noise = noise[rows.to(device)]
        return (images + 0.06 * noise).clamp_(0, 1), labels


def batch_share(batch_size: int, rank: int, world_size: int) -> Tensor:
    """The rows of a batch that process ``rank`` of ``world_size`` takes: ``rank::world_size``."""
    return torch.arange(rank, batch_size, world_size)


class ShapesLoader:
    """Batches of a ``Shapes`` set (process ``rank``'s share of each), rendered directly on ``device``."""

    def __init__(self, dataset: Shapes, batch_size: int, device, seed: int = 0, train: bool = True,
                 rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed = seed
        self.train = train
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n, b = len(self.dataset), self.batch_size
        return n // b if self.train else -(-n // b)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Tuple[Tensor, Tensor]]:
        n, b = len(self.dataset), self.batch_size
        order = epoch_permutation(n, self.seed, epoch) if self.train else torch.arange(n)
        for i in range(start, len(self)):
            batch = order[i * b : (i + 1) * b]
            rows = batch_share(len(batch), self.rank, self.world_size)
            if len(rows):
                noise_seed = sample_seed(self.seed, epoch if self.train else -1, i)
                yield self.dataset.render(batch[rows], self.device, noise_seed, part=(rows, len(batch)))


# ---------------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------------

def scan_image_folder(root: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    """``root/<class>/<image>`` -> (sorted class names, [(path, label)]); DataError if unusable."""
    if not os.path.exists(root):
        raise DataError(f"data directory {root!r} does not exist")
    if not os.path.isdir(root):
        raise DataError(f"data directory {root!r} is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"data directory {root!r} has no class subdirectories; expected "
                        f"{os.path.join(root, '<class>', '<image>')} (one subdirectory per class)")
    samples, empty = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(root, name)
        files = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames.sort()
            files += [os.path.join(dirpath, f) for f in sorted(filenames)
                      if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
        if not files:
            empty.append(name)
        samples += [(path, label) for path in files]
    if empty:
        raise DataError(f"data directory {root!r}: class subdirectories without images "
                        f"({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}")
    return classes, samples


def read_image(path: str):
    """Open ``path`` as an RGB PIL image; DataError naming the file if it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path!r}: {exc}") from exc


def image_to_tensor(image) -> Tensor:
    """A PIL RGB image -> uint8 ``[3, H, W]``."""
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def center_crop(image, size: int) -> Tensor:
    """Evaluation view: the centre square of side ``EVAL_CROP * min(H, W)``, resized to ``size``."""
    from PIL import Image

    width, height = image.size
    side = EVAL_CROP * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return image_to_tensor(image.resize((size, size), Image.BILINEAR, box=box))


def random_resized_crop(image, size: int, generator: torch.Generator,
                        scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3)) -> Tensor:
    """Training view: a random crop (area ``scale``, aspect ``ratio``), resized, flipped with p=0.5."""
    from PIL import Image

    width, height = image.size
    r = torch.rand(5, generator=generator).tolist()
    area = width * height * (scale[0] + (scale[1] - scale[0]) * r[0])
    aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * r[1])
    w = min(width, math.sqrt(area * aspect))
    h = min(height, math.sqrt(area / aspect))
    left, top = (width - w) * r[2], (height - h) * r[3]
    out = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if r[4] < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return image_to_tensor(out)


class UnreadableImage:
    """What ``ImageFolder`` returns in place of an image it cannot decode."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason


def collate_readable(items) -> Tuple[Tensor, Tensor, List[UnreadableImage]]:
    """``[(image or UnreadableImage, label)]`` -> uint8 images ``[B, 3, S, S]``, labels ``[B]`` of the
    readable ones, and the unreadable ones."""
    readable = [(image, label) for image, label in items if not isinstance(image, UnreadableImage)]
    unreadable = [image for image, _ in items if isinstance(image, UnreadableImage)]
    if not readable:
        paths = ", ".join(repr(u.path) for u in unreadable)
        raise DataError(f"every image of a batch is unreadable ({paths}): {unreadable[0].reason}")
    images = torch.stack([image for image, _ in readable])
    return images, torch.tensor([label for _, label in readable]), unreadable


class ImageFolder(torch.utils.data.Dataset):
    """Labelled image files; item ``(epoch, i)`` is a training view, item ``i`` an evaluation view.

    Returns ``(uint8 [3, S, S], label)``, or ``(UnreadableImage, label)`` for a file that cannot be
    decoded (the loader leaves it out of its batch and reports it).
    """

    def __init__(self, samples: List[Tuple[str, int]], classes: List[str], image_size: int, seed: int = 0):
        self.samples = samples
        self.classes = classes
        self.image_size = image_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (None, key)
        path, label = self.samples[index]
        try:
            image = read_image(path)
        except DataError as exc:
            return UnreadableImage(path, str(exc)), label
        if epoch is None:
            return center_crop(image, self.image_size), label
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        return random_resized_crop(image, self.image_size, generator), label


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(epoch, index)`` keys of one epoch's permutation, from batch ``start`` on
    (``train``), or of plain indices in order (evaluation); process ``rank``'s share of each.
    Set ``epoch`` and ``start`` before iterating."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, train: bool, rank: int = 0,
                 world_size: int = 1):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.train = train
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.train else -(-n // b)

    def __iter__(self):
        b, share = self.batch_size, slice(self.rank, None, self.world_size)
        if not self.train:
            for i in range(len(self)):
                batch = list(range(i * b, min((i + 1) * b, self.num_samples)))[share]
                if batch:
                    yield batch
            return
        order = epoch_permutation(self.num_samples, self.seed, self.epoch).tolist()
        for i in range(self.start, len(self)):
            yield [(self.epoch, j) for j in order[i * b : (i + 1) * b][share]]


class ImageFolderLoader:
    """Batches of an ``ImageFolder`` through a ``DataLoader`` (decoding in ``num_workers`` processes).

    Images that cannot be decoded are left out of their batch, reported once on stderr and kept in
    ``unreadable`` (path -> reason).
    """

    def __init__(self, dataset: ImageFolder, batch_size: int, device, seed: int = 0,
                 train: bool = True, num_workers: int = 0, rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.device = torch.device(device)
        self.sampler = EpochBatchSampler(len(dataset), batch_size, seed, train, rank, world_size)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=num_workers, collate_fn=collate_readable,
            pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0)
        self.unreadable: Dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.sampler)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Tuple[Tensor, Tensor]]:
        self.sampler.epoch, self.sampler.start = epoch, start
        for images, labels, unreadable in self.loader:
            for image in unreadable:
                if image.path not in self.unreadable:
                    self.unreadable[image.path] = image.reason
                    print(f"focalfast: skipping an unreadable image: {image.reason}", file=sys.stderr)
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def default_num_workers(world_size: int = 1) -> int:
    """Image decoding processes per training process: up to 4, no more than the CPU cores each
    process has (0, decoding in the training process, where that is under 2)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // world_size
    return min(4, per_process) if per_process >= 2 else 0


# ---------------------------------------------------------------------------------------------
# Choosing the data of a run
# ---------------------------------------------------------------------------------------------

class Data:
    """The train and validation loaders of a run, with the class names and normalisation."""

    def __init__(self, train, val, classes: Sequence[str], mean, std, description: str):
        self.train, self.val = train, val
        self.classes = list(classes)
        self.mean, self.std = tuple(mean), tuple(std)
        self.description = description

    def unreadable(self) -> List[str]:
        """The paths of the images left out so far because they cannot be decoded."""
        loaders = [loader for loader in (self.train, self.val) if isinstance(loader, ImageFolderLoader)]
        return sorted({path for loader in loaders for path in loader.unreadable})


def split_samples(samples: List[Tuple[str, int]], fraction: float, seed: int):
    """Hold out ``fraction`` of every class (at least one image when the class has two) for validation."""
    by_class = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    train, val = [], []
    for label in sorted(by_class):
        items = by_class[label]
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(sample_seed(seed, -3, label)))
        n_val = min(len(items) - 1, max(1, round(fraction * len(items)))) if fraction > 0 else 0
        picked = set(order[:n_val].tolist())
        for i, item in enumerate(items):
            (val if i in picked else train).append(item)
    return train, val


def build_data(
    data_dir: Optional[str],
    image_size: int,
    batch_size: int,
    device,
    seed: int = 0,
    train_samples: int = 5000,
    val_samples: int = 1000,
    val_fraction: float = 0.1,
    num_workers: Optional[int] = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Data:
    """The data of a run: ``data_dir`` None gives the generated shapes; a directory is read as
    ``data_dir/train`` + ``data_dir/val`` if ``train`` exists, else as class folders of which
    ``val_fraction`` per class is held out for validation. ``batch_size`` is the batch of all
    ``world_size`` processes together; the loaders give process ``rank``'s share of each batch.
    ``num_workers`` None: ``default_num_workers(world_size)``."""
    shard = dict(rank=rank, world_size=world_size)
    if data_dir is None:
        train = Shapes(train_samples, image_size, seed, "train")
        val = Shapes(val_samples, image_size, seed, "val")
        if len(train) < batch_size:
            raise DataError(f"train_samples={train_samples} is smaller than batch_size={batch_size}")
        return Data(ShapesLoader(train, batch_size, device, seed, train=True, **shard),
                    ShapesLoader(val, batch_size, device, seed, train=False, **shard),
                    Shapes.classes, Shapes.mean, Shapes.std,
                    f"generated shapes ({train_samples} train / {val_samples} val, {len(Shapes.classes)} classes)")

    train_dir = os.path.join(data_dir, "train")
    if os.path.isdir(train_dir):
        classes, train_samples_list = scan_image_folder(train_dir)
        val_dir = os.path.join(data_dir, "val")
        if os.path.isdir(val_dir):
            val_classes, val_samples_list = scan_image_folder(val_dir)
            if val_classes != classes:
                raise DataError(f"{val_dir!r} has classes {val_classes} but {train_dir!r} has {classes}")
        else:
            train_samples_list, val_samples_list = split_samples(train_samples_list, val_fraction, seed)
    else:
        classes, samples = scan_image_folder(data_dir)
        train_samples_list, val_samples_list = split_samples(samples, val_fraction, seed)
    if len(train_samples_list) < batch_size:
        raise DataError(f"data directory {data_dir!r} has {len(train_samples_list)} training images, "
                        f"fewer than batch_size={batch_size}")
    train_set = ImageFolder(train_samples_list, classes, image_size, seed)
    val_set = ImageFolder(val_samples_list, classes, image_size, seed)
    if num_workers is None:
        num_workers = default_num_workers(world_size)
    val_loader = (ImageFolderLoader(val_set, batch_size, device, seed, False, num_workers, **shard)
                  if len(val_set) else None)
    return Data(ImageFolderLoader(train_set, batch_size, device, seed, True, num_workers, **shard), val_loader,
                classes, IMAGENET_MEAN, IMAGENET_STD,
                f"{data_dir} ({len(train_set)} train / {len(val_set)} val images, {len(classes)} classes)")
