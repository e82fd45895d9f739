"""Opening one image file safely: the one decoder both stages use.

Every way an image can fail to give pixels (missing, truncated, not an
image, a header claiming more pixels than PIL's decompression-bomb limit)
ends in `UnreadableImage` with the file named, so the skip flags
(`data.skip_unreadable_images`, `extract.skip_rejected_images`) treat them
all alike. PIL's `DecompressionBombWarning` (over `Image.MAX_IMAGE_PIXELS`,
about 89 M pixels) is refused like its `DecompressionBombError` (twice that):
an image that large is a bomb or a mistake in a probing dataset, and decoding
it would cost gigabytes in every DataLoader worker.
"""

from __future__ import annotations

import warnings

from PIL import Image


class UnreadableImage(ValueError):
    """An image file that cannot be decoded; the message names the file and why."""

    def __init__(self, path: str, reason: str, missing: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.missing = missing


def open_image(path: str, decode: bool = True) -> Image.Image | None:
    """The image at `path` as RGB (`decode`), or None after checking its structure only.

    `decode=False` runs PIL's `verify` (header and structure, cheap);
    `decode=True` decodes every pixel, which also catches truncated files.

    Raises:
      UnreadableImage: the file is missing, not a decodable image, or larger
        than PIL's decompression-bomb limit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                if decode:
                    return image.convert("RGB")
                image.verify()
                return None
        except FileNotFoundError as e:
            raise UnreadableImage(path, "the file does not exist", missing=True) from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UnreadableImage(
                path,
                f"too many pixels to decode safely ({e}; PIL.Image.MAX_IMAGE_PIXELS = "
                f"{Image.MAX_IMAGE_PIXELS})",
            ) from e
        except MemoryError:
            raise
        except Exception as e:  # PIL's decoders raise many types (OSError, SyntaxError, ...)
            raise UnreadableImage(path, f"{type(e).__name__}: {e}") from e
