"""The second origin: LFS resolves answer a 302 to a signed, expiring CDN URL on the CDN port, and the
CDN serves the content (by sha256) only for a valid, unexpired signature.

Imports ``transport`` (which it subclasses) and ``repo``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from .core import _Ctx
from .repo import FileInfo
from .transport import _HubTransport


class _HubCdn(_HubTransport):
    """Signing, the LFS redirect and the CDN handler."""

    def _sign(self, sha: str, expires: int) -> str:
        with self._lock:
            key = self._sign_key
        return hmac.new(key, f"{sha}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _redirect_to_cdn(
        self, ctx: _Ctx, info: FileInfo, commit: str, extra: Mapping[str, str] | None = None
    ) -> None:
        expires = int(time.time() + self.signed_url_ttl)
        query = urlencode({"Expires": expires, "Signature": self._sign(info.sha256, expires)})
        location = f"{self.cdn_url}/cdn/{info.sha256}/{quote(info.path)}?{query}"
        self._send_headers(
            ctx,
            302,
            {
                "Location": location,
                "X-Repo-Commit": commit,
                "X-Linked-Etag": f'"{info.sha256}"',
                "X-Linked-Size": str(info.size),
                "ETag": f'"{info.sha256}"',
                "Content-Length": "0",
                **(extra or {}),
            },
        )

    def _handle_cdn(self, ctx: _Ctx, sha: str) -> None:
        try:
            expires = int(ctx.query["Expires"][0])
            signature = ctx.query["Signature"][0]
        except (KeyError, ValueError, IndexError):
            self._plain(ctx, 403, "Missing signature")
            return
        if not hmac.compare_digest(signature, self._sign(sha, expires)):
            self._plain(ctx, 403, "Signature does not match")
            return
        if time.time() >= expires:
            self._plain(ctx, 403, "Request has expired")
            return
        with self._lock:
            info = self._blobs.get(sha)
        if info is None:
            self._plain(ctx, 404, "NoSuchKey")
            return
        self._serve_content(ctx, info, {})
