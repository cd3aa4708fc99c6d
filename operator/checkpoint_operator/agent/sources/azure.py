"""az://account/container/prefix/ (a tree) and az://account/container/blob (one file or archive).

With azure-storage-blob. Credentials, from the standard environment (the operator fills it
from spec.source.azureBlob.secretRef): AZURE_STORAGE_CONNECTION_STRING (its BlobEndpoint is
used, so Azurite and sovereign clouds work; its account must be the URI's), else
AZURE_STORAGE_KEY (the account's shared key), else AZURE_STORAGE_SAS_TOKEN; with none, the
requests are anonymous (public containers). The endpoint is --endpoint-url, else
https://ACCOUNT.blob.core.windows.net.

A tree is listed first (names, sizes, ETags) and checked against the names rule and the
limits before any byte moves; each blob is then read at the ETag it was listed with (If-Match),
so a blob replaced mid-import fails the import instead of mixing two versions.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import RESERVED_ROOT_NAMES
from checkpoint_operator.protocol.names import printable
from checkpoint_operator.agent.progress import Progress
from checkpoint_operator.agent.redact import quoted
from checkpoint_operator.agent.sources.base import (
    Cancelled, Fetched, Limits, Options, Source, check_count, check_listing, copy_stream, file_name, over_limit,
    run_parallel, target_path,
)

PARALLEL_BLOBS = 4
CLIENT_OPTIONS = {"retry_total": 3, "connection_timeout": 10, "read_timeout": 120}


def parse_az_uri(uri: str) -> tuple[str, str, str]:
    """(account, container, path inside the container)."""
    rest = uri[len("az://"):] if uri.startswith("az://") else ""
    account, _, rest = rest.partition("/")
    container, _, path = rest.partition("/")
    if not account or not container:
        raise AgentError(f"{uri}: expected az://ACCOUNT/CONTAINER/prefix/ or az://ACCOUNT/CONTAINER/blob")
    return account, container, path


class AzureBlobSource(Source):
    def __init__(self, uri: str, options: Options) -> None:
        self.uri = uri
        self.account, self.container_name, self.path = parse_az_uri(uri)
        self.is_tree = self.path == "" or self.path.endswith("/")
        self.endpoint = options.endpoint_url

    def _service(self):
        from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
        from azure.storage.blob import BlobServiceClient

        connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection:
            try:
                service = BlobServiceClient.from_connection_string(connection, **CLIENT_OPTIONS)
            except ValueError:
                raise AgentError(f"{self.uri}: AZURE_STORAGE_CONNECTION_STRING is not a valid connection string") from None
            if service.account_name != self.account:
                raise AgentError(f"{self.uri}: AZURE_STORAGE_CONNECTION_STRING is for account {service.account_name!r}, "
                                 f"not {self.account!r}")
            self.endpoint = service.url
            return service
        url = self.endpoint or f"https://{self.account}.blob.core.windows.net"
        credential = None
        if os.environ.get("AZURE_STORAGE_KEY"):
            credential = AzureNamedKeyCredential(self.account, os.environ["AZURE_STORAGE_KEY"])
        elif os.environ.get("AZURE_STORAGE_SAS_TOKEN"):
            credential = AzureSasCredential(os.environ["AZURE_STORAGE_SAS_TOKEN"].lstrip("?"))
        self.endpoint = url
        return BlobServiceClient(url, credential=credential, **CLIENT_OPTIONS)

    def _describe(self, exc: BaseException, what: str) -> AgentError:
        from azure.core.exceptions import (
            ClientAuthenticationError, HttpResponseError, ResourceModifiedError, ResourceNotFoundError,
            ServiceRequestError,
        )
        where = f" (endpoint {self.endpoint})"
        code = getattr(exc, "error_code", None) or ""
        code = str(getattr(code, "value", code))  # the SDK gives an enum or a string
        if isinstance(exc, AgentError):
            return exc
        if isinstance(exc, ClientAuthenticationError) or getattr(exc, "status_code", None) == 403:
            anonymous = not any(os.environ.get(k) for k in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY",
                                                            "AZURE_STORAGE_SAS_TOKEN"))
            hint = ("no credentials were given (a Secret with AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY or "
                    "AZURE_STORAGE_SAS_TOKEN: secretRef)" if anonymous else "the credentials were refused")
            return AgentError(f"access denied to {what}{where}: {hint} ({code or 'HTTP 403'})")
        if isinstance(exc, ResourceNotFoundError):
            if code == "ContainerNotFound":
                return AgentError(f"no such container {self.container_name!r} in account {self.account} for "
                                  f"{self.uri}{where}")
            return AgentError(f"not found: {what}{where}" + (f" ({code})" if code else ""))
        if isinstance(exc, ResourceModifiedError) or code == "ConditionNotMet":
            return AgentError(f"{what}: replaced while it was being imported (its ETag changed); import again")
        if isinstance(exc, ServiceRequestError):
            return AgentError(f"cannot reach the Azure Blob endpoint{where} for {self.uri}: {quoted(str(exc), 200)}")
        if isinstance(exc, HttpResponseError):
            return AgentError(f"Azure Blob error on {what}{where}: {code or exc.status_code}: "
                              f"{quoted(_first_line(str(exc.message or exc)), 200)}")
        return AgentError(f"{what}: {type(exc).__name__}: {quoted(str(exc), 200)}")

    def fetch(self, tree: str, downloads: str, limits: Limits) -> Fetched:
        service = self._service()
        container = service.get_container_client(self.container_name)
        if self.is_tree:
            self._fetch_tree(container, tree, limits)
            return Fetched(provenance={"uri": self.uri})
        name = file_name(self.uri, self.path)
        target = os.path.join(downloads, name)
        blob = container.get_blob_client(self.path)
        try:
            props = blob.get_blob_properties()
            if props.size > limits.max_size:
                raise over_limit(self.uri, props.size, limits)
            self._download(container, self.path, props.size, props.etag, target, self.uri, None, None)
        except Exception as exc:  # noqa: BLE001 - translated into one line
            raise self._describe(exc, self.uri) from None
        return Fetched(provenance={"uri": self.uri}, file=target, name=name)

    def _fetch_tree(self, container, tree: str, limits: Limits) -> None:
        blobs: list[tuple[str, int, str]] = []
        try:
            for props in container.list_blobs(name_starts_with=self.path or None, include=["metadata"]):
                rel = props.name[len(self.path):]
                if props.name.endswith("/") or (props.metadata or {}).get("hdi_isfolder") == "true":
                    continue  # directory markers (hierarchical namespaces, tools)
                if rel in RESERVED_ROOT_NAMES:
                    continue  # what the agent writes beside a checkpoint's data
                blobs.append((rel, props.size, props.etag))
                check_count(self.uri, len(blobs), limits)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._describe(exc, self.uri) from None
        if not blobs:
            raise AgentError(f"nothing under {self.uri}: no blobs to import")
        total = check_listing(self.uri, [(rel, size) for rel, size, _ in blobs], limits)
        failed = threading.Event()
        with Progress("import", total) as progress:
            def one(item: tuple[str, int, str]) -> None:
                rel, size, etag = item
                label = f"az://{self.account}/{self.container_name}/{self.path}{printable(rel)}"
                try:
                    self._download(container, self.path + rel, size, etag, target_path(tree, rel), label, progress,
                                   failed)
                except (Cancelled, AgentError):
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise self._describe(exc, label) from None

            run_parallel(one, blobs, PARALLEL_BLOBS, failed)

    @staticmethod
    def _download(container, name: str, size: int, etag: str, target: str, label: str, progress,
                  cancelled: Optional[threading.Event]) -> None:
        from azure.core import MatchConditions
        stream = container.download_blob(name, etag=etag, match_condition=MatchConditions.IfNotModified,
                                         max_concurrency=2)
        if stream.size != size:
            raise AgentError(f"{label}: {stream.size} bytes now, {size} when listed: replaced mid-import; import again")
        copy_stream(stream.read, target, label=label, expected=size, limit=size, progress=progress, cancelled=cancelled)


SOURCE = AzureBlobSource


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"
