"""Chat-data uploads the trigger tests share: small conversations and the blob they land in."""

from __future__ import annotations

import hashlib
import json

from azure.storage.blob import BlobClient

from shared.settings import Settings
from shared.storage import blob_service


def conv(i: int) -> bytes:
    prompt = f"What is {i} plus {i}?"
    return json.dumps({"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
                       "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"{2 * i}, arr!"}]}).encode() + b"\n"


GOOD = b"".join(conv(i) for i in range(60)) + b"not json\n"
MOSTLY_BAD = b"".join(conv(i) for i in range(10)) + b"{broken\n" * 30


def upload(s: Settings, name: str, data: bytes, *, small_chunks: bool = False) -> BlobClient:
    blob_service(s).get_blob_client(s.chat_data_container, name).upload_blob(data, overwrite=True)
    if small_chunks:  # make the download come in many pieces, as a large blob would
        return BlobClient.from_connection_string(s.storage_connection, s.chat_data_container, name,
                                                 max_single_get_size=1024, max_chunk_get_size=1024)
    return blob_service(s).get_blob_client(s.chat_data_container, name)
