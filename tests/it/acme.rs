//! ACME against a real pebble, the HTTP-01 listener, post-quantum key exchange and HSTS (issue 22).

mod config;
mod doctor;
mod hsts;
mod pebble;
mod post_quantum;
