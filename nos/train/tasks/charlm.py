"""A character-level LSTM language model on a text file or on the Python standard library.

Its default corpus needs no download: it is the source text of a fixed list
of standard-library modules of the running Python, read from the standard
library's own directory (no module is imported), so it is the same on every
run of the same Python.
"""

from __future__ import annotations

import functools
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from nos.train.tasks.base import Task, TaskData, check_count

CORPUS_CHARS = 200_000
CHARS_PER_MODULE = 20_000  # a slice of many modules: more kinds of text than a few files
MIN_CORPUS_CHARS = 50_000
CORPUS_MODULES = (
    "textwrap", "string", "shlex", "csv", "fractions", "heapq", "calendar", "pprint",
    "contextlib", "random", "statistics", "functools", "dataclasses", "argparse", "difflib",
)
SPLITS = (0.8, 0.1, 0.1)
UNKNOWN = 0  # index of characters met in val/test but not in the training text


def stdlib_corpus() -> str:
    """The first CHARS_PER_MODULE characters of each CORPUS_MODULES source, up to CORPUS_CHARS."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for module in CORPUS_MODULES:
        path = stdlib / f"{module}.py"
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")[:CHARS_PER_MODULE]
        parts.append(text)
        total += len(text)
        if total >= CORPUS_CHARS:
            break
    corpus = "".join(parts)[:CORPUS_CHARS]
    if len(corpus) < MIN_CORPUS_CHARS:
        raise ValueError(f"charlm: only {len(corpus)} characters of standard-library source "
                         f"found in {stdlib}; pass the option path with a text file")
    return corpus


@functools.lru_cache(maxsize=4)
def _read_text(path: str | None) -> str:
    if path is None:
        return stdlib_corpus()
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"charlm: text file {path} does not exist") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"charlm: text file {path} is not UTF-8 ({error})") from None


@functools.lru_cache(maxsize=4)
def vocabulary(path: str | None) -> str:
    """The characters of the training region, sorted; character i has index i + 1."""
    text = _read_text(path)
    return "".join(sorted(set(text[:int(len(text) * SPLITS[0])])))


def sequences(ids: np.ndarray, seq_len: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping inputs ids[i:i+L] and targets ids[i+1:i+L+1], each (N, L) int64."""
    n = (len(ids) - 1) // seq_len
    x = torch.as_tensor(ids[:n * seq_len].reshape(n, seq_len), dtype=torch.int64)
    y = torch.as_tensor(ids[1:n * seq_len + 1].reshape(n, seq_len), dtype=torch.int64)
    return x, y


class CharLSTM(nn.Module):
    """Embedding, one LSTM layer, a linear map to the vocabulary: (B, L) -> (B, L, V)."""

    def __init__(self, vocab: int, embed: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: Tensor) -> Tensor:
        hidden, _ = self.lstm(self.embed(x))
        return self.head(hidden)


@dataclass(frozen=True)
class CharLM(Task):
    """Next-character prediction with a small LSTM.

    The text (option ``path``, else the standard-library corpus, 200k
    characters) is cut into contiguous train/val/test regions of 80/10/10%;
    each region gives non-overlapping sequences of ``seq_len`` characters.
    Inputs and targets are int64 character indices of shape (N, seq_len);
    the model outputs (N, seq_len, V).  The vocabulary is the training
    region's characters plus index 0 for characters unseen there.  Loss,
    correct and count run over every position.  The loss is in nats per
    character: divided by ln 2 it is bits per character.
    """

    name: ClassVar[str] = "charlm"
    batch_size: ClassVar[int] = 32
    epochs: ClassVar[int] = 3
    child: ClassVar[str] = "LSTM (embedding 32, hidden 128)"
    path_options: ClassVar[tuple[str, ...]] = ("path",)

    path: str | None = None
    seq_len: int = 64

    def __post_init__(self) -> None:
        if self.path is not None:
            object.__setattr__(self, "path", str(self.path))
        check_count(self.name, "seq_len", self.seq_len)

    def make_data(self) -> TaskData:
        text = _read_text(self.path)
        index = {char: i + 1 for i, char in enumerate(vocabulary(self.path))}
        ids = np.fromiter((index.get(char, UNKNOWN) for char in text), np.int64, len(text))
        ends = np.cumsum([round(len(ids) * f) for f in SPLITS[:2]])
        regions = np.split(ids, ends)
        for region, split in zip(regions, ("train", "val", "test"), strict=True):
            if len(region) <= self.seq_len:
                raise ValueError(f"charlm: the {split} region has {len(region)} characters, "
                                 f"too few for seq_len {self.seq_len}; use a longer text")
        return TaskData(*(t for region in regions for t in sequences(region, self.seq_len)))

    def build_model(self) -> nn.Module:
        return CharLSTM(len(vocabulary(self.path)) + 1)
