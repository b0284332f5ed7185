"""The emulator's OAuth2 token endpoint (``POST /token``, refresh-token grant, RFC 6749 errors)."""

from __future__ import annotations

from urllib.parse import parse_qs

from .core import ADS_SCOPE, DM_SCOPE, EmulatorCore, EmuReply, Token

__all__ = ["OAuthApi"]


class OAuthApi(EmulatorCore):
    """Issues access tokens that really expire; counts refreshes so tests can assert caching."""

    def handle_token(self, body: bytes) -> EmuReply:
        """``POST /token`` (form-encoded refresh-token grant, RFC 6749 errors)."""
        self.token_requests += 1
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        cfg = self.config
        self.token_requests_by_client[form.get("client_id", "")] += 1
        if cfg.token_outage:
            return self._reply(503, {"error": "temporarily_unavailable"}, api=False)
        if form.get("grant_type") != "refresh_token":
            return self._reply(
                400,
                {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."},
                api=False,
            )
        if (cfg.client_id is not None and form.get("client_id") != cfg.client_id) or (
            cfg.client_secret is not None and form.get("client_secret") != cfg.client_secret
        ):
            return self._reply(
                401,
                {"error": "invalid_client", "error_description": "The OAuth client was not found."},
                api=False,
            )
        rt = form.get("refresh_token", "")
        if not rt:
            return self._reply(
                400,
                {
                    "error": "invalid_request",
                    "error_description": "Missing required parameter: refresh_token",
                },
                api=False,
            )
        if rt in cfg.invalid_grant_tokens or (cfg.refresh_tokens and rt not in cfg.refresh_tokens):
            return self._reply(
                400,
                {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
                api=False,
            )
        scopes = (ADS_SCOPE,) if rt in cfg.ads_only_refresh_tokens else (ADS_SCOPE, DM_SCOPE)
        token = f"ya29.emu{self.rng.getrandbits(128):032x}"
        self.tokens[token] = Token(self.clock() + cfg.token_ttl_s, scopes)
        return self._reply(
            200,
            {
                "access_token": token,
                "expires_in": cfg.token_ttl_s,
                "scope": " ".join(scopes),
                "token_type": "Bearer",
            },
            api=False,
        )
