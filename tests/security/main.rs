//! Security tests of issue 4: every protection allowed and refused, from
//! outside, over real loopback sockets (source addresses 127.0.0.2, .3, ...
//! for IP rules), with an in-file backend that records what reached it.

mod auth;
mod harness;
mod hostile;
mod ip;
mod limits;
mod origin;
mod paths;
