"""intel_extension_for_pytorch (IPEX) on old Intel stacks.

IPEX is retired: its last release is 2.8, each release works with the torch of the same
major.minor only, and 2.8 refuses to import with torch >= 2.9. Current stacks get the `xpu` device
from torch itself. Where IPEX is installed next to the torch it supports, importing it is how
such a stack enables its XPU support, so the backend does that once, on its first use; anywhere
else it leaves IPEX alone. Nothing requires it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging

import torch

log = logging.getLogger("lowbit")

IPEX = "intel_extension_for_pytorch"


def installed_version() -> str | None:
    """IPEX's version from its package metadata (nothing is imported), or None."""
    try:
        return importlib.metadata.version(IPEX)
    except importlib.metadata.PackageNotFoundError:
        return None


def decide(ipex_version: str | None, torch_version: str) -> tuple[bool, str]:
    """(import it?, why): import only an installed XPU build of IPEX ("2.8.10+xpu") whose
    major.minor is torch's. Its CPU builds add no xpu device, so they are left alone too."""
    if ipex_version is None:
        return False, f"{IPEX} is not installed (torch's own xpu device needs none)"
    if not ipex_version.endswith("+xpu"):
        return False, f"{IPEX} {ipex_version} is not an XPU build (no '+xpu'): not imported"
    if _major_minor(ipex_version) != _major_minor(torch_version):
        return False, (f"{IPEX} {ipex_version} supports torch {'.'.join(map(str, _major_minor(ipex_version)))} "
                       f"only, not {torch_version}: not imported")
    return True, f"{IPEX} {ipex_version} matches torch {torch_version}: imported, as that stack needs"


@functools.cache
def enable() -> str:
    """Import IPEX when decide() says so (once per process); return what happened."""
    do_import, why = decide(installed_version(), torch.__version__)
    if do_import:
        try:
            importlib.import_module(IPEX)
        except Exception as exc:  # a broken IPEX must not break lowbit
            why = f"{IPEX} did not import: {type(exc).__name__}: {exc}"
    log.debug("lowbit: %s", why)
    return why


def _major_minor(version: str) -> tuple[int, ...]:
    parts = version.split("+")[0].split(".")[:2]
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)
