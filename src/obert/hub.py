"""The Hugging Face hub, when a model or a data set comes from it: can it be reached now, and a
load that fails ends in one line within seconds, not minutes of retries printed to stderr."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

HUB_REACH_TIMEOUT_S = 3.0


@functools.cache
def reachable(endpoint: str) -> bool:
    """Can a TCP connection to the hub be opened within ``HUB_REACH_TIMEOUT_S``? The name lookup
    runs in a daemon thread: a resolver that does not answer must not hold us up either."""
    import socket
    import threading
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname, url.port or 443), HUB_REACH_TIMEOUT_S):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(HUB_REACH_TIMEOUT_S)
    return bool(ok)


@contextlib.contextmanager
def dataset_access() -> Iterator[None]:
    """Around ``datasets.load_dataset`` of a hub data set: when the hub cannot be reached, the
    offline mode of ``HF_HUB_OFFLINE=1`` (the local cache answers, or the load fails at once:
    without it huggingface_hub retries for half a minute and prints each retry), and no
    warnings from huggingface_hub either way: the caller turns a failure into one line."""
    import datasets
    from huggingface_hub import constants

    hub_log = logging.getLogger("huggingface_hub")
    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, hub_log.level
    offline = constants.HF_HUB_OFFLINE or not reachable(constants.ENDPOINT)
    try:
        hub_log.setLevel(logging.ERROR)
        if offline:
            constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, level = saved
        hub_log.setLevel(level)
