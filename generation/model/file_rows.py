"""An embedding table whose rows are read from the served file (`os.pread`), not through its
memory mapping.

Looking a token up in a mapped table makes the pages it touches resident in the process, and
on kernels whose page cache holds large folios a fault maps the whole folio around the row (up
to 2 MiB): a few hundred tokens made a 1.7B model's whole fp32 table resident (384 MiB) for a
few kilobytes of rows. Read with `pread`, the rows come from the page cache into the lookup's
own output, and the process holds none of the table (the kernel may keep the file cached,
memory it gives back when it needs it). The table stays mapped as `weight` for anything that
asks for it (an adapter's checks, `model_bytes`); only the lookup reads the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

CHUNK = 1 << 28  # bytes a read of the whole table asks for at a time


class FileRows(nn.Embedding):
    """`nn.Embedding` over `weight` (mapped from `path`, its data at byte `offset`), whose
    lookups read the rows from the file."""

    def __init__(self, weight: torch.Tensor, path: Path, offset: int) -> None:
        nn.Module.__init__(self)
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx, self.max_norm, self.norm_type = None, None, 2.0
        self.scale_grad_by_freq, self.sparse = False, False
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.path, self.offset = Path(path), offset
        self._row_bytes = self.embedding_dim * weight.element_size()
        self._fd: tuple[int, int] | None = None  # (process id, descriptor): not across a fork

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        tokens = ids.reshape(-1).tolist()  # a decoding step's few ids: plain ints are cheapest
        if any(token < 0 or token >= self.num_embeddings for token in tokens):
            raise IndexError(f"token ids must be in [0, {self.num_embeddings})")
        rows = torch.empty((len(tokens), self.embedding_dim), dtype=self.weight.dtype)
        raw = rows.view(torch.uint8).numpy()
        fd = self._descriptor()
        first: dict[int, int] = {}
        for index, token in enumerate(tokens):
            earlier = first.setdefault(token, index)
            if earlier != index:  # a prompt repeats its tokens: read each once
                raw[index] = raw[earlier]
            elif os.preadv(fd, [raw[index]], self.offset + token * self._row_bytes) != len(
                raw[index]
            ):
                raise OSError(f"{self.path} ended inside the embedding table")
        return rows.view(*ids.shape, self.embedding_dim)

    def read_table(self) -> torch.Tensor:
        """The whole table, read from the file into memory of its own (the mapping untouched)."""
        table = torch.empty_like(self.weight, device="cpu")
        raw = table.view(-1).view(torch.uint8).numpy()
        fd, done = self._descriptor(), 0
        while done < len(raw):
            read = os.preadv(fd, [raw[done : done + CHUNK]], self.offset + done)
            if read <= 0:
                raise OSError(f"{self.path} ended inside the embedding table")
            done += read
        return table

    def _descriptor(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._fd[0] != pid:
            self._fd = (pid, os.open(self.path, os.O_RDONLY | os.O_CLOEXEC))
        return self._fd[1]

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None and fd[0] == os.getpid():
            os.close(fd[1])

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_fd": None}
