"""fabriek: the open platform that runs an AI Factory."""

__version__ = "0.1.0"  # the one place the version is written (pyproject reads it from here)

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> object:
    # The SDK pulls in httpx; keep `import fabriek` light for the job shim and the CLI's start-up.
    if name == "Client":
        from fabriek.client.client import Client

        return Client
    raise AttributeError(name)
