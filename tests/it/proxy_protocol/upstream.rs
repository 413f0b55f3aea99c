//! `send_proxy_protocol` towards upstreams.
