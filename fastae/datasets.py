"""Real images that ship with the installed packages; nothing downloads.

- ``patches``: grayscale patches of scikit-image's bundled photographs, split
  into training and validation by image (no patch of a validation image is
  ever trained on).
- ``digits``: scikit-learn's bundled 8x8 handwritten digits.

Each returns ``(train, validation, image_shape)``: float32 rows in [0, 1].
"""
import numpy as np

TRAIN_IMAGES = ("camera", "moon", "brick", "grass", "gravel", "coins", "clock", "page", "text")
VALIDATION_IMAGES = ("astronaut", "coffee", "chelsea")


def _grayscale(name):
    from skimage import data
    from skimage.color import rgb2gray
    image = getattr(data, name)()
    image = rgb2gray(image) if image.ndim == 3 else image.astype(np.float64) / 255.0
    return image.astype(np.float32)


def _patches_of(image, size, count, rng):
    h, w = image.shape
    rows = rng.integers(0, h - size + 1, count)
    cols = rng.integers(0, w - size + 1, count)
    return np.stack([image[r:r + size, c:c + size] for r, c in zip(rows, cols)]).reshape(count, -1)


def patches(size=16, per_image=2000, seed=0):
    """Random size x size patches: ``per_image`` from each training photograph
    and from each validation photograph."""
    if not 4 <= size <= 128:
        raise ValueError(f"size must lie in [4, 128], got {size}")
    rng = np.random.default_rng(seed)
    train = np.concatenate([_patches_of(_grayscale(n), size, per_image, rng) for n in TRAIN_IMAGES])
    val = np.concatenate([_patches_of(_grayscale(n), size, per_image, rng) for n in VALIDATION_IMAGES])
    return train[rng.permutation(len(train))], val, (size, size)


def digits(validation=0.2, seed=0):
    """scikit-learn's 1797 digits (8x8, scaled to [0, 1]), split at random."""
    from sklearn.datasets import load_digits
    x = (load_digits().data / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(validation * len(x)))
    return x[order[n_val:]], x[order[:n_val]], (8, 8)
