"""Where pretrained weights come from: the torch hub and Hugging Face caches, or a
download when the server is reachable.

A machine without network fails at once (a 3-second TCP check) with a message that says
where to put the file, instead of after the downloaders' retries.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from pytorch_grad_cam.cli.errors import WeightsUnavailableError

#: Seconds to wait for a TCP connection to a weights server before calling it unreachable.
CONNECT_TIMEOUT = 3.0
#: The values of ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` that mean "offline".
OFFLINE_VALUES = ("1", "on", "yes", "true")


def reachable(url: str, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    Checked before a download so that a machine without network fails at once instead
    of after the downloaders' retries. With a proxy configured the check is skipped.
    """
    if urllib.request.getproxies().get(urlparse(url).scheme):
        return True
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def no_weights_error(model: str, where: str, offline: str) -> WeightsUnavailableError:
    """The error for ``--model``'s pretrained weights that cannot be had.

    Args:
        model: the ``--model`` value.
        where: how to get the weights without this command downloading them.
        offline: the offline alternative, e.g. the default model.
    """
    return WeightsUnavailableError(
        f"no network to download its pretrained weights: {where}, or pass --weights PATH, "
        f"or --random-weights to try the pipeline untrained, or {offline}",
        "--model",
        model,
    )


def with_pretrained_weights(
    build: Callable[..., nn.Module],
    weights: Any,
    unavailable: Callable[[str], WeightsUnavailableError],
) -> nn.Module:
    """``build(weights=weights)`` in eval mode, the torchvision ``weights`` taken from the
    torch hub cache, or downloaded when their server is reachable (a 3-second check, not a
    downloader's retries).

    Args:
        build: a torchvision model builder.
        weights: its weights enum value (its ``url`` names the file).
        unavailable: the error to raise, given where to put the file.

    Raises:
        WeightsUnavailableError: ``unavailable(where)``: not cached, and no network.
    """
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    no_weights = unavailable(f"put {weights.url} at {cached}")
    if not cached.is_file() and not reachable(weights.url):
        raise no_weights
    try:
        return build(weights=weights).eval()
    except (urllib.error.URLError, OSError) as error:
        raise no_weights from error


def timm_cached_weights(name: str) -> str | None:
    """The path of the timm model ``name``'s pretrained weights in the Hugging Face
    cache, if they are there."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    config = timm.models.get_pretrained_cfg(name)
    if config is None or not config.hf_hub_id:
        return None
    filenames = [config.hf_hub_filename] if config.hf_hub_filename else []
    for filename in [*filenames, "model.safetensors", "pytorch_model.bin"]:
        path = try_to_load_from_cache(config.hf_hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def hugging_face_hub_reachable() -> bool:
    """Whether the Hugging Face Hub can be reached: not with ``HF_HUB_OFFLINE`` (or
    ``TRANSFORMERS_OFFLINE``) set, else a TCP check of ``HF_ENDPOINT``."""
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if offline and offline.strip().lower() in OFFLINE_VALUES:
        return False
    return reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
