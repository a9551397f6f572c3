"""Batched, on-device image augmentation as a finite set of discrete views.

A view is (flip, dy, dx): an optional horizontal flip, then a translation by (dy, dx) pixels
with zero fill. Random crop with padding p (torchvision RandomCrop(size, padding=p)) is exactly
a uniform draw of a translation in [-p, p]^2, so training augmentation and the views of
`cache-logits --views` are one mechanism: draw view ids per sample, apply them to the batch.
Because the view set is finite, a teacher's logits can be cached for every view and looked up
for exactly the view the student sees (Beyer et al. 2022, "Knowledge distillation: a good
teacher is patient and consistent").

Mixing (mixup, Zhang et al. 2018; cutmix, Yun et al. 2019) is not a view: it makes a new image
from two images of the batch, so no table can hold its teacher logits. `mixup:A` / `cutmix:A`
in an augmentation spec ask the engine to mix every training batch after its views are applied,
with lam ~ Beta(A, A) and a partner permutation drawn from the training run's seeded generator:
resumable, and the same draws for a baseline and a distilled student with the same seed. The
objective then sees `Batch.mix` and mixes its label terms, lam * L(y) + (1 - lam) * L(y[perm]);
an online teacher labels exactly the mixed input (function matching, Beyer et al. 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kdcli.errors import UsageError

MIXINGS = ("mixup", "cutmix")


@dataclass
class MixDraw:
    """One batch's mixing: input b was mixed with input perm[b]; the labels weigh lam and 1 - lam."""

    perm: torch.Tensor  # (B,) int64, on the batch's device
    lam: float


@dataclass(frozen=True)
class Mixing:
    """Within-batch mixing of training inputs: `kind` mixup or cutmix, lam ~ Beta(alpha, alpha)."""

    kind: str
    alpha: float

    def spec(self) -> str:
        return f"{self.kind}:{self.alpha:g}"

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, float, torch.Tensor]:
        """Keys (n,) whose argsort is the partner permutation, lam, and 2 uniforms for a cutmix box.

        torch has no seeded Beta sampler, so lam comes from numpy seeded by one draw of `generator`;
        every call consumes the same amount of `generator` for a given n."""
        keys = torch.rand(n, generator=generator)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        lam = float(np.random.default_rng(seed).beta(self.alpha, self.alpha))
        return keys, lam, torch.rand(2, generator=generator)

    def apply(self, x: torch.Tensor, keys: torch.Tensor, lam: float, centre: torch.Tensor) -> tuple[torch.Tensor, MixDraw]:
        """x (B, ...) float, keys (B,) -> the mixed batch (B, ...) and its MixDraw.

        mixup: lam * x + (1 - lam) * x[perm]. cutmix (x (B, C, H, W)): a box of area (1 - lam) * H * W
        centred at `centre` (2 uniforms in [0, 1)) and clipped to the image is pasted from x[perm];
        lam becomes the share of the image left unpasted."""
        perm = keys.argsort().to(x.device)
        if self.kind == "mixup":
            return torch.lerp(x[perm], x, lam), MixDraw(perm, lam)
        height, width = x.shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        cy, cx = int(centre[0] * height), int(centre[1] * width)
        half_h, half_w = int(height * ratio) // 2, int(width * ratio) // 2
        top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
        left, right = max(cx - half_w, 0), min(cx + half_w, width)
        mixed = x.clone()
        mixed[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
        return mixed, MixDraw(perm, 1.0 - (bottom - top) * (right - left) / (height * width))


@dataclass(frozen=True)
class ViewSet:
    """All combinations of flip in {no, yes} (if `flip`) and translations in [-shift, shift]^2, and an
    optional within-batch `mixing` applied on top (not a view: it is never cached)."""

    flip: bool = False
    shift: int = 0
    mixing: Mixing | None = None

    @classmethod
    def parse(cls, spec: str) -> ViewSet:
        """'flip,translate:2' / 'crop:4,flip' / 'translate:1,mixup:1' / 'none' -> ViewSet. crop:p and
        translate:p are the same; at most one of mixup:A and cutmix:A (A > 0, the Beta parameter)."""
        flip, shift, mixing = False, 0, None
        for part in (p.strip() for p in spec.split(",")):
            if part in ("", "none"):
                continue
            name, _, value = part.partition(":")
            if name == "flip" and not value:
                flip = True
            elif name in ("crop", "translate"):
                try:
                    shift = int(value)
                except ValueError:
                    raise UsageError(f"augmentation {part!r}: expected {name}:PIXELS, e.g. {name}:2") from None
                if shift < 0:
                    raise UsageError(f"augmentation {part!r}: pixels must be >= 0")
            elif name in MIXINGS:
                try:
                    alpha = float(value)
                except ValueError:
                    raise UsageError(f"augmentation {part!r}: expected {name}:ALPHA, e.g. {name}:1") from None
                if not alpha > 0 or not math.isfinite(alpha):
                    raise UsageError(f"augmentation {part!r}: the Beta parameter ALPHA must be > 0")
                if mixing is not None:
                    raise UsageError(f"augmentation {spec!r}: give one of mixup:A and cutmix:A, not both")
                mixing = Mixing(name, alpha)
            else:
                raise UsageError(f"unknown augmentation {part!r}; use flip, crop:P, translate:P, mixup:A or cutmix:A")
        return cls(flip, shift, mixing)

    def spec(self) -> str:
        parts = (["flip"] if self.flip else []) + ([f"translate:{self.shift}"] if self.shift else [])
        parts += [self.mixing.spec()] if self.mixing else []
        return ",".join(parts) or "none"

    @property
    def count(self) -> int:
        return (2 if self.flip else 1) * (2 * self.shift + 1) ** 2

    @property
    def identity(self) -> int:
        """The id of the clean view (no flip, no shift)."""
        return self.shift * (2 * self.shift + 1) + self.shift

    def decode(self, view_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """view ids (B,) -> flip (B,) bool, dy (B,), dx (B,) in [-shift, shift]."""
        side = 2 * self.shift + 1
        flip = view_ids >= side * side
        rest = view_ids % (side * side)
        return flip, rest // side - self.shift, rest % side - self.shift

    def encode(self, flip: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """The inverse of `decode`: flip (B,) bool, dy (B,), dx (B,) -> view ids (B,) int64.

        torchvision's RandomCrop(size, padding=p) at (top, left) followed by RandomHorizontalFlip is
        the view dy = p - top, dx = (left - p if flipped else p - left).
        """
        side = 2 * self.shift + 1
        ids = (torch.as_tensor(dy) + self.shift) * side + torch.as_tensor(dx) + self.shift
        return (ids + torch.as_tensor(flip).long() * side * side).long()

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n uniformly drawn view ids (B,), int64."""
        ids = torch.randint(self.count, (n,), generator=generator)
        return ids.to(device) if device is not None else ids

    def apply(self, images: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W), any dtype, view ids (B,) -> the viewed images (B, C, H, W).

        out[b, c, h, w] = flip_b(image_b)[c, h - dy_b, w - dx_b], zero outside the image. Flip and
        translation are one gather from the zero-padded batch (one pass over the output, no
        per-sample Python): the flat source index is row * padded_width + column.
        """
        if self.count == 1:
            return images
        flip, dy, dx = self.decode(view_ids.to(images.device))
        batch, channels, height, width = images.shape
        p = self.shift
        padded_width = width + 2 * p
        padded = torch.nn.functional.pad(images, (p, p, p, p)) if p else images.contiguous()
        rows = (p - dy).view(-1, 1) + torch.arange(height, device=images.device)  # (B, H)
        cols = (p - dx).view(-1, 1) + torch.arange(width, device=images.device)  # (B, W)
        if self.flip:  # flipping the padded image = padding the flipped one (the padding is symmetric)
            cols = torch.where(flip.view(-1, 1), padded_width - 1 - cols, cols)
        index = (rows.view(batch, height, 1) * padded_width + cols.view(batch, 1, width)).view(batch, 1, -1)
        flat = padded.reshape(batch, channels, -1)
        return flat.gather(2, index.expand(batch, channels, height * width)).view(batch, channels, height, width)


def resolve_augment(spec: str, default: tuple[str, ...], is_image: bool) -> ViewSet:
    """'auto' picks the data set's default augmentation; anything else is parsed."""
    if spec == "auto":
        spec = ",".join(default) if is_image else "none"
    views = ViewSet.parse(spec)
    if (views.count > 1 or (views.mixing and views.mixing.kind == "cutmix")) and not is_image:
        raise UsageError(f"augmentation {spec!r} needs image data")
    return views
