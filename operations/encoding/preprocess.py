"""cn_clip's image transform, computed with numpy: the same floats, ~3x faster.

cn_clip's `image_transform` is Resize((R, R), bicubic) on the PIL image, then
convert to RGB, ToTensor (uint8 / 255) and Normalize ((x - mean) / std), each
a separate torch pass over the pixels. Here the resize is the same PIL call
and the rest one numpy expression with the same float32 operations in the
same order, so the result is identical bit for bit (tested against cn_clip's
transform) and a few times faster: one pass over the pixels instead of three.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# cn_clip's (OpenAI CLIP's) normalisation constants.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


class FastImageTransform:
    """Callable like cn_clip's `image_transform(resolution)`: PIL image -> (3, R, R) float32."""

    def __init__(self, resolution: int) -> None:
        self.resolution = int(resolution)

    def array(self, image: Image.Image) -> np.ndarray:
        """(3, R, R) float32, C-contiguous."""
        resized = image.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC)
        if resized.mode != "RGB":
            resized = resized.convert("RGB")
        pixels = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
        return np.ascontiguousarray(((pixels - MEAN) / STD).transpose(2, 0, 1))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(self.array(image))

    def batch(self, images) -> np.ndarray:
        """(N, 3, R, R) float32 for a sequence of images."""
        out = np.empty((len(images), 3, self.resolution, self.resolution), dtype=np.float32)
        for i, image in enumerate(images):
            out[i] = self.array(image)
        return out
