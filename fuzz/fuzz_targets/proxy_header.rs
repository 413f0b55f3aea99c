//! The PROXY protocol header parser (`proxy_header::parse`) on arbitrary
//! bytes, as each listener setting (`v1`, `v2`, `any`) reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shunt::testing::{ProxyParsed, ProxyVersions, parse_proxy_header};

/// The most bytes a header may take (v2: 16 + 216).
const MAX_HEADER: usize = 232;

fuzz_target!(|data: &[u8]| {
    for versions in [ProxyVersions::V1, ProxyVersions::V2, ProxyVersions::Any] {
        let whole = parse_proxy_header(data, versions);
        match whole {
            Ok(ProxyParsed::Complete { len, .. }) => {
                assert!(len <= data.len() && len <= MAX_HEADER, "{len}");
                // Every shorter prefix is incomplete (so a reader never
                // consumes past the header), and the header alone parses the same.
                for n in 0..len {
                    assert_eq!(
                        parse_proxy_header(&data[..n], versions),
                        Ok(ProxyParsed::Incomplete)
                    );
                }
                assert_eq!(parse_proxy_header(&data[..len], versions), whole);
            }
            Ok(ProxyParsed::Incomplete) => {
                // Incomplete means every byte belongs to the header: bounded.
                assert!(data.len() < MAX_HEADER, "{}", data.len());
                for n in 0..data.len() {
                    assert_eq!(
                        parse_proxy_header(&data[..n], versions),
                        Ok(ProxyParsed::Incomplete)
                    );
                }
            }
            // An error stays an error as more bytes arrive.
            Err(e) => {
                let mut more = data.to_vec();
                more.extend_from_slice(b"\r\n");
                assert!(parse_proxy_header(&more, versions).is_err(), "{e}");
            }
        }
    }
});
