"""A learned optimizer on disk: plain tensors and plain values in a ``.pt`` file.

The file is a dictionary that ``torch.load(path, weights_only=True)`` reads:

    format        "nos.learned.CoordinateLSTM" (what the file is)
    version       1
    architecture  {"hidden_size": 20, "layers": 2, "preprocess_p": 10.0, "output_scale": 0.1}
    network       the network's weights by name (nn.Module.state_dict)
    training      how it was meta-trained: task, seed, meta_steps, unroll, ... (plain values)

Anything else - random bytes, a torch file of another kind, a missing key, a
weight of the wrong shape - is refused by :func:`load_checkpoint` with a
ValueError of one line that says what is wrong.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nos.learned.lstm import Architecture, CoordinateLSTM

FORMAT = "nos.learned.CoordinateLSTM"
VERSION = 1
SUFFIX = ".pt"
KEYS = ("format", "version", "architecture", "network", "training")


def is_checkpoint_path(rule: object) -> bool:
    """Whether ``rule`` names a learned optimizer's file (a path ending in ``.pt``) rather
    than a rule: rule text never ends so."""
    return isinstance(rule, (str, os.PathLike)) and os.fspath(rule).endswith(SUFFIX)


def save_checkpoint(path: str | os.PathLike, network: CoordinateLSTM,
                    training: Mapping[str, Any]) -> None:
    """Write ``network`` and the plain values of ``training`` to ``path`` (whole or not
    at all: through a temporary file in the same folder)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": network.architecture.to_dict(),
        "network": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()},
        "training": _plain(dict(training), "training"),
    }
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                         suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _plain(value: Any, where: str) -> Any:
    """``value`` made of exactly the types ``torch.load(weights_only=True)`` reads back
    (a ``str`` subclass such as ``torch.__version__`` becomes a ``str``); TypeError if not."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}: a checkpoint keeps plain values only")


def load_checkpoint(path: str | os.PathLike) -> tuple[CoordinateLSTM, dict[str, Any]]:
    """The network a checkpoint holds (on the CPU, in eval mode, without gradients) and
    its ``training`` record.

    Raises:
        ValueError: one line naming the file and what is wrong with it.
    """
    where = os.fspath(path)
    try:
        with open(where, "rb") as file:
            is_zip = zipfile.is_zipfile(file)  # torch.save's format since torch 1.6
        if not is_zip:
            raise ValueError(f"{where} is not a learned optimizer: it is not a torch file "
                             "(torch.save writes a zip archive)")
        payload = torch.load(where, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        raise ValueError(f"learned optimizer {where}: {err.strerror.lower()}") from None
    except ValueError:
        raise
    except Exception as err:  # torch.load raises many kinds for a file it cannot read
        raise ValueError(f"{where} is not a learned optimizer: torch.load(weights_only=True) "
                         f"cannot read it ({_reason(err)})") from None
    network, training = _from_payload(payload, where)
    return network, training


def _from_payload(payload: object, where: str) -> tuple[CoordinateLSTM, dict[str, Any]]:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = (f"keys {', '.join(map(repr, list(payload)[:6]))}" if isinstance(payload, dict)
                 else f"a {type(payload).__name__}")
        raise ValueError(f"{where} is a torch file of another kind, not a learned optimizer "
                         f"(no format {FORMAT!r}; it holds {found})")
    if payload.get("version") != VERSION:
        raise ValueError(f"{where}: learned-optimizer format version {payload.get('version')!r}"
                         f", this nos reads version {VERSION}")
    missing = [key for key in KEYS if key not in payload]
    if missing:
        raise ValueError(f"{where}: the learned optimizer lacks {', '.join(map(repr, missing))}")
    arch = payload["architecture"]
    if not isinstance(arch, dict) or set(arch) != set(Architecture().to_dict()):
        raise ValueError(f"{where}: 'architecture' must hold exactly "
                         f"{', '.join(Architecture().to_dict())}, got {arch!r}")
    try:
        network = CoordinateLSTM(Architecture(**arch))
    except ValueError as err:
        raise ValueError(f"{where}: architecture {err}") from None
    _check_weights(payload["network"], network.state_dict(), where)
    if not isinstance(payload["training"], dict):
        raise ValueError(f"{where}: 'training' must be a dictionary, "
                         f"got a {type(payload['training']).__name__}")
    network.load_state_dict(payload["network"])
    network.eval().requires_grad_(False)
    return network, payload["training"]


def _check_weights(weights: object, expected: Mapping[str, torch.Tensor], where: str) -> None:
    if not isinstance(weights, dict):
        raise ValueError(f"{where}: 'network' must be a dictionary of tensors, "
                         f"got a {type(weights).__name__}")
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    if missing or extra:
        what = f"lacks weight {missing[0]!r}" if missing else f"has unknown weight {extra[0]!r}"
        raise ValueError(f"{where}: the network {what}")
    for name, reference in expected.items():
        tensor = weights[name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ValueError(f"{where}: weight {name!r} is not a floating-point tensor")
        if tensor.shape != reference.shape:
            raise ValueError(f"{where}: weight {name!r} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(reference.shape)} for the architecture")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{where}: weight {name!r} holds NaN or infinite values")


def _reason(err: Exception) -> str:
    """The part of torch.load's message that says what is wrong, on one short line."""
    text = str(err).strip()
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a {found.group(1)}, not only plain tensors and values"
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 120 else line[:117] + "..."


def training_summary(training: Mapping[str, Any]) -> str:
    """One line on how a checkpoint was meta-trained (for messages and reports)."""
    parts = [f"{key} {training[key]}" for key in ("task", "meta_steps", "unroll", "seed")
             if key in training]
    seconds = training.get("seconds")
    if isinstance(seconds, (int, float)) and math.isfinite(seconds):
        parts.append(f"{seconds:.0f} s")
    return ", ".join(parts) if parts else "no training record"
