"""Image embeddings of a frozen encoder, computed once per image and kept on disk.

What stays frozen while something else trains is computed once: a teacher's embeddings while a
student is distilled, a base model's embeddings while its prompt encoder and mask decoder learn
clicks. An embedding is stored under a key made of the image encoder's weight hash (so a model whose
decoder changed still finds them), its input size and the input image's bytes, one safetensors file
each, written atomically, so a run that stops half-way keeps what it computed and a later run with
other images reuses what matches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from minisam.atomic import atomic_output
from minisam.checkpoints import LoadedModel, weights_hash
from minisam.training.model_inputs import ModelInputs


class EmbeddingStore:
    """``model``'s image embeddings, computed once per input image and kept in ``folder``."""

    def __init__(self, model: LoadedModel, folder: Path, batch_size: int = 4) -> None:
        self.model = model
        self.folder = Path(folder)
        self.batch_size = batch_size
        self.computed = 0  # images the encoder actually ran on (the rest came from the folder)
        self._encoder_hash = weights_hash(model.sam.image_encoder)

    def _key(self, image: torch.Tensor) -> str:
        digest = hashlib.sha256(self._encoder_hash.encode())
        digest.update(f"{self.model.config.image_size}:".encode())
        digest.update(image.contiguous().numpy().tobytes())
        return digest.hexdigest()[:32]

    def __call__(
        self, images: torch.Tensor, progress: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """Embeddings (N, C, g, g) of model-sized uint8 ``images`` (N, 3, S, S)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = [self._key(image) for image in images]
        files = [self.folder / f"{key}.safetensors" for key in keys]
        missing = [i for i, file in enumerate(files) if not file.is_file()]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            embeddings = encode(self.model.sam, images[chunk], self.batch_size)
            for i, embedding in zip(chunk, embeddings, strict=True):
                with atomic_output(files[i]) as tmp:
                    save_file({"embedding": embedding.contiguous()}, str(tmp))
            self.computed += len(chunk)
            if progress is not None:
                progress(start + len(chunk), len(missing))
        return torch.stack([load_file(str(file))["embedding"] for file in files])


def encode(sam: torch.nn.Module, images: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Float32 CPU embeddings (N, C, g, g) of model-sized uint8 ``images`` (N, 3, S, S), in eval
    mode (frozen batch norms), without gradients."""
    was_training = sam.training
    sam.eval()
    device = next(sam.parameters()).device
    out = []
    with torch.no_grad():  # not inference_mode: the embeddings feed a training graph afterwards
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device).float()
            out.append(sam.image_encoder(sam.preprocess(batch)).float().cpu())
    sam.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def _image_groups(data: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of the distinct images of ``data`` in order, each sample's position among them),
    hashing each image once."""
    position: dict[bytes, int] = {}
    distinct: list[int] = []
    rows: list[int] = []
    for i in range(len(data)):
        key = hashlib.sha1(data.images[i].numpy().tobytes()).digest()
        if key not in position:
            position[key] = len(distinct)
            distinct.append(i)
        rows.append(position[key])
    return torch.tensor(distinct, dtype=torch.long), torch.tensor(rows, dtype=torch.long)


def unique_images(data: ModelInputs) -> torch.Tensor:
    """Indices of the distinct images in ``data`` (several masks of one slice share an image)."""
    return _image_groups(data)[0]


def embeddings_of(
    store: EmbeddingStore, data: ModelInputs, progress: Callable[[int, int], None] | None = None
) -> torch.Tensor:
    """The embedding of every sample of ``data`` (N, C, g, g); each distinct image encoded once."""
    distinct, rows = _image_groups(data)
    return store(data.images[distinct], progress)[rows]
