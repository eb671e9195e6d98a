"""fabriek: the open platform that runs an AI Factory."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fabriek")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> object:
    # The SDK pulls in httpx; keep `import fabriek` light for the job shim and the CLI's start-up.
    if name == "Client":
        from fabriek.client.client import Client

        return Client
    raise AttributeError(name)
