//! Asymmetric JWTs, JWKS (file and URL), the token in Sec-WebSocket-Protocol, forwarded claims and client certificates (issue 20).
