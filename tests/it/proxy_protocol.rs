//! PROXY protocol v1/v2 on the listener, trusted X-Forwarded-For, PROXY towards upstreams (issue 21).
