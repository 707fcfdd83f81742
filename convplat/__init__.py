"""convplat: pretrain AlexNet, ZFNet and OverFeat with Ray, study them, transfer them."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("convplat")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
