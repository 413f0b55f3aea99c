//! A server-side TLS stream over rustls' unbuffered API that holds no buffer
//! while idle.
//!
//! `tokio-rustls` drives rustls' buffered `ServerConnection`, whose record
//! deframer keeps a 4 KiB read buffer (and two chunk queues) for the life of
//! the connection: an idle `wss://` tunnel paid for it for an hour. Here the
//! caller owns every buffer ([`rustls::server::UnbufferedServerConnection`]):
//! ciphertext read from the socket is kept only while it holds a partial
//! record, ciphertext to write only until the socket takes it, and decrypted
//! bytes only when the reader's buffer was too small for a record. All three
//! are released the moment they are empty, so an idle connection is the
//! socket and rustls' connection state.
//!
//! Everything else is rustls' own: handshakes (TLS 1.2 and 1.3, ALPN, SNI
//! through the certificate resolver, session tickets), post-handshake
//! messages (key updates, tickets), alerts and `close_notify`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Size of the per-thread read buffer: a whole record (at most ~16.6 KiB)
/// and then some; a longer burst is read in several steps.
const READ_SIZE: usize = 32 * 1024;

thread_local! {
    /// Where the socket is read before the bytes are kept: no connection owns it.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

/// Plaintext encrypted per write call: bounds what one write buffers.
/// A larger write is taken in part (`poll_write` returns how much it took),
/// which is what `AsyncWrite` allows, so `outgoing` stays within about
/// 64 KiB of ciphertext whatever a caller hands in.
const MAX_WRITE: usize = 64 * 1024;

/// Room for the record headers and AEAD tags of `len` plaintext bytes.
/// A first guess, sized so one `encrypt` call usually fits; if rustls asks
/// for more (`InsufficientSize`), `encrypt` grows the buffer and tries once more.
fn sealed_len(len: usize) -> usize {
    // 16 KiB records; each adds at most 5 (header) + 1 (TLS 1.3 type) + 16 (tag) + 8 (TLS 1.2 nonce).
    len + (len / (16 * 1024) + 1) * 32
}

/// A TLS server connection on a TCP socket.
pub(crate) struct TlsStream {
    /// The socket, read and written only through its readiness and
    /// `try_read` / `try_write`, so the stream adds no waiter of its own.
    io: TcpStream,
    /// rustls' connection state (keys, handshake, sequence numbers); the only
    /// part of an idle connection besides the socket.
    conn: UnbufferedServerConnection,
    /// Ciphertext read and not yet processed (a partial record); empty holds no allocation.
    incoming: Vec<u8>,
    /// Ciphertext not yet written, from `written` on; empty holds no allocation.
    outgoing: Vec<u8>,
    /// How much of `outgoing` the socket has taken: a partial write advances
    /// it, and when it reaches the end both are reset (and the `Vec` freed).
    written: usize,
    /// Decrypted bytes the reader has not taken, from `plain_at` on.
    plain: Vec<u8>,
    /// How much of `plain` the reader has taken; freed when it reaches the end.
    plain_at: usize,
    /// The peer sent `close_notify` (or closed TCP): reads return end of stream.
    read_closed: bool,
    /// Our `close_notify` is queued.
    write_closed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("io", &self.io)
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.written))
            .field("plain", &(self.plain.len() - self.plain_at))
            .finish_non_exhaustive()
    }
}

/// What one step of the connection's state machine asks for next.
/// The answer of `step` and `encrypt`, which each call
/// `process_tls_records` once: the caller decides whether that means waiting
/// on the socket, returning data, or stepping again.
enum Next {
    /// Process again.
    Again,
    /// Read more ciphertext from the socket.
    Read,
    /// Plaintext is ready (`ReadTraffic`), or the peer closed.
    Readable,
    /// Application data may be written.
    Writable,
    /// The connection is closed both ways.
    Closed,
}

impl TlsStream {
    /// The client's certificate (the end entity), if it sent one the
    /// listener's client CA verified.
    pub(crate) fn peer_certificate(&self) -> Option<&[u8]> {
        self.conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.as_ref())
    }

    /// Run the server side of the handshake on `io` with `config`.
    ///
    /// `config` is the listener's current `ServerConfig` (its resolver picks
    /// the certificate by SNI). Returns once the handshake is complete and its
    /// last flight written; an error means the handshake failed (an alert was
    /// sent if the socket took it) or the client closed before finishing. The
    /// caller ([`crate::tls::accept`]) first checks that the client speaks TLS
    /// at all, and bounds the time this may take (`--tls-handshake-timeout`).
    pub(crate) async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
        let mut s = TlsStream {
            io,
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            written: 0,
            plain: Vec::new(),
            plain_at: 0,
            read_closed: false,
            write_closed: false,
        };
        std::future::poll_fn(|cx| s.poll_handshake(cx)).await?;
        Ok(s)
    }

    /// The negotiated ALPN protocol (`acme-tls/1` marks an ACME validation).
    /// `None` when the client offered no ALPN (or none matched).
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Whether the handshake resumed a session (a ticket or the session
    /// cache) rather than running in full.
    pub(crate) fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The key exchange group the handshake negotiated (`/status`, the debug log).
    pub(crate) fn key_exchange_group(&self) -> Option<rustls::NamedGroup> {
        self.conn.negotiated_key_exchange_group().map(|g| g.name())
    }

    /// The TLS version negotiated.
    pub(crate) fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Drive the handshake: write what rustls queued, step, and read the socket
    /// whenever rustls is blocked on the client. Ready once rustls is past the
    /// handshake, with everything it queued written.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_write_out(cx))?;
            let next = self.step()?;
            // TLS 1.3 lets the server write before the client's Finished: wait for it.
            let read = matches!(next, Next::Read)
                || (matches!(next, Next::Writable) && self.conn.is_handshaking());
            match next {
                Next::Again => {}
                _ if read => {
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "tls handshake eof",
                        )));
                    }
                }
                _ => {
                    // Tickets and the last flight go out before the handshake is done.
                    ready!(self.poll_write_out(cx))?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// One call into rustls: queue what it wants sent, say what it waits for.
    /// Decrypted records are only peeked (`Readable`); [`Self::take_plain`] takes them.
    fn step(&mut self) -> io::Result<Next> {
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
        let next = match state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                encode_into(&mut self.outgoing, |out| e.encode(out))?;
                Ok(Next::Again)
            }
            // Queued in `outgoing` counts as sent: every later byte goes out after it.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Ok(Next::Again)
            }
            Ok(ConnectionState::ReadTraffic(_)) => Ok(Next::Readable),
            Ok(ConnectionState::PeerClosed) => {
                self.read_closed = true;
                Ok(Next::Again)
            }
            Ok(ConnectionState::Closed) => Ok(Next::Closed),
            Ok(ConnectionState::WriteTraffic(_)) => Ok(Next::Writable),
            Ok(ConnectionState::BlockedHandshake) => Ok(Next::Read),
            // Early data is off (`max_early_data_size` is 0); anything new is not ours.
            Ok(_) => Err(invalid("unexpected TLS state")),
            Err(e) => Err(invalid(e)),
        };
        self.discard(discard);
        if next.is_err() {
            self.queue_alert();
        }
        next
    }

    /// After an error rustls may have an alert queued: send it if the socket takes it now.
    fn queue_alert(&mut self) {
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
            let _ = encode_into(&mut self.outgoing, |out| e.encode(out));
        }
        self.discard(discard);
        let pending = &self.outgoing[self.written..];
        if !pending.is_empty() {
            let _ = self.io.try_write(pending);
        }
    }

    /// Move the next decrypted record into `buf` (the rest into `plain`).
    /// Returns bytes copied; 0 if rustls had none after all.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
        let mut taken = Ok(0);
        if let Ok(ConnectionState::ReadTraffic(mut r)) = state
            && let Some(record) = r.next_record()
        {
            taken = record.map_err(invalid).map(|record| {
                let payload = record.payload;
                let n = payload.len().min(buf.remaining());
                buf.put_slice(&payload[..n]);
                if n < payload.len() {
                    self.plain = payload[n..].to_vec();
                    self.plain_at = 0;
                }
                n
            });
        }
        self.discard(discard);
        taken
    }

    /// Drop the `n` ciphertext bytes rustls has processed from the front of
    /// `incoming` (what `process_tls_records` reports as `discard`); it must be
    /// called after every such call, or the same records would be seen again.
    fn discard(&mut self, n: usize) {
        if n >= self.incoming.len() {
            // Idle again: hold nothing.
            self.incoming = Vec::new();
        } else if n > 0 {
            self.incoming.drain(..n);
        }
    }

    /// Read ciphertext into `incoming`; `Ok(0)` is the peer's end of stream.
    /// The socket is read into the thread's scratch buffer and only what
    /// arrived is kept, so a read allocates the bytes it got, not a record's worth.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            let read = SCRATCH.with_borrow_mut(|scratch| -> io::Result<usize> {
                let n = self.io.try_read(scratch)?;
                self.incoming.extend_from_slice(&scratch[..n]);
                Ok(n)
            });
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    /// Write queued ciphertext until none is left.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.outgoing.len() {
            ready!(self.io.poll_write_ready(cx))?;
            match self.io.try_write(&self.outgoing[self.written..]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if !self.outgoing.is_empty() {
            self.outgoing = Vec::new();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Queue an application-data or close_notify write in `WriteTraffic`.
    /// `None` queues `close_notify`. Returns `Writable` when the records are in
    /// `outgoing` (not yet on the socket), `Again` when rustls is not in
    /// `WriteTraffic` yet (a key update or ticket to process first).
    fn encrypt(&mut self, data: Option<&[u8]>) -> io::Result<Next> {
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
        let next = match state {
            Ok(ConnectionState::WriteTraffic(mut w)) => {
                let start = self.outgoing.len();
                let want = sealed_len(data.map_or(0, <[u8]>::len));
                self.outgoing.resize(start + want, 0);
                let mut r = match data {
                    Some(d) => w.encrypt(d, &mut self.outgoing[start..]),
                    None => w.queue_close_notify(&mut self.outgoing[start..]),
                };
                if let Err(EncryptError::InsufficientSize(e)) = r {
                    self.outgoing.resize(start + e.required_size, 0);
                    r = match data {
                        Some(d) => w.encrypt(d, &mut self.outgoing[start..]),
                        None => w.queue_close_notify(&mut self.outgoing[start..]),
                    };
                }
                match r {
                    Ok(n) => {
                        self.outgoing.truncate(start + n);
                        Ok(Next::Writable)
                    }
                    Err(e) => {
                        self.outgoing.truncate(start);
                        Err(invalid(e))
                    }
                }
            }
            // Not writable right now: the caller steps the state machine first.
            Ok(_) => Ok(Next::Again),
            Err(e) => Err(invalid(e)),
        };
        self.discard(discard);
        next
    }

    /// Step until application data may be written (plaintext that arrives
    /// meanwhile is kept for the reader).
    fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.step()? {
                Next::Again => {}
                Next::Writable => return Poll::Ready(Ok(())),
                Next::Readable => self.stash_plain()?,
                Next::Read => {
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Next::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    /// Append every decrypted record to `plain` (a write found them first).
    fn stash_plain(&mut self) -> io::Result<()> {
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
        let mut r = Ok(());
        if let Ok(ConnectionState::ReadTraffic(mut t)) = state {
            while let Some(record) = t.next_record() {
                match record {
                    Ok(rec) => {
                        if self.plain_at == self.plain.len() {
                            self.plain.clear();
                            self.plain_at = 0;
                        }
                        self.plain.extend_from_slice(rec.payload);
                    }
                    Err(e) => {
                        r = Err(invalid(e));
                        break;
                    }
                }
            }
        }
        self.discard(discard);
        r
    }
}

/// Encode a rustls chunk at the end of `out`, growing it as asked.
/// Handshake messages are small: 512 bytes are tried first, then exactly
/// what rustls asks for.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = 512;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) => room = e.required_size,
            Err(e) => {
                out.truncate(start);
                return Err(invalid(e));
            }
        }
    }
}

/// A TLS failure as an `io::Error` (`InvalidData`), the kind hyper and the
/// tunnel log as a failed leg.
fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsyncRead for TlsStream {
    /// Bytes a write stashed in `plain` come first. Then every record already
    /// read is returned, as far as `buf` goes, before the socket is read again.
    /// Ok with nothing added is the end of stream (`close_notify`); a TCP close
    /// without it is `UnexpectedEof`, which a truncation attack would look like.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.plain_at < this.plain.len() {
            let n = (this.plain.len() - this.plain_at).min(buf.remaining());
            buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
            this.plain_at += n;
            if this.plain_at == this.plain.len() {
                this.plain = Vec::new();
                this.plain_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        // Records already read are all returned in one call, as far as `buf` goes.
        let mut got = false;
        loop {
            // Handshake replies, key updates and alerts go out as reads find them;
            // a socket that is full just wakes us when it drains.
            if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(e));
            }
            match this.step()? {
                Next::Again => {
                    if (got || this.read_closed) && this.incoming.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Next::Readable => {
                    got |= this.take_plain(buf)? > 0;
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                Next::Closed => return Poll::Ready(Ok(())),
                Next::Read | Next::Writable => {
                    if got || this.read_closed {
                        return Poll::Ready(Ok(()));
                    }
                    if ready!(this.poll_fill(cx))? == 0 {
                        // TCP closed without close_notify: the end all the same.
                        this.read_closed = true;
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    /// Returns how many bytes of `buf` were encrypted (at most `MAX_WRITE`, 64 KiB);
    /// they are queued and their sending started, not necessarily finished:
    /// `poll_flush` waits until the socket has taken them.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Backpressure: what the socket has not taken yet goes first.
        ready!(this.poll_write_out(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let take = buf.len().min(MAX_WRITE);
        loop {
            ready!(this.poll_writable(cx))?;
            if let Next::Writable = this.encrypt(Some(&buf[..take]))? {
                break;
            }
        }
        // Start sending now; the rest goes out on flush or the next write.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    /// Wait until the socket has taken every queued record; nothing is
    /// buffered on the plaintext side, so this is all a flush needs.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_out(cx)
    }

    /// Send `close_notify` (unless the peer is gone already, when there is no
    /// one to tell), write it out, then shut the socket's write half.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            ready!(this.poll_write_out(cx))?;
            loop {
                match ready!(this.poll_writable(cx)) {
                    Ok(()) => {}
                    // The peer is gone: there is nobody to tell.
                    Err(_) => {
                        this.write_closed = true;
                        break;
                    }
                }
                if let Next::Writable = this.encrypt(None)? {
                    this.write_closed = true;
                    break;
                }
            }
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! Real sockets on loopback, a real rustls client, TLS 1.2 and 1.3.

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server config with a fresh development certificate, and a client
    /// config for `version` that trusts that certificate's CA.
    fn configs(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let dev = crate::certgen::generate(&["localhost".into()]).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = vec![CertificateDer::from_pem_slice(dev.server_cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(dev.server_key.as_bytes()).unwrap();
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(dev.ca_cert.as_bytes()).unwrap())
            .unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Arc::new(server), Arc::new(client))
    }

    /// Bytes that change from one position to the next, so a lost or
    /// reordered byte shows in the echo.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(37)).collect()
    }

    /// A client sends 1 MiB in uneven writes; the server reads in small
    /// pieces, echoes everything, and both ends close with close_notify.
    async fn echo(version: &'static rustls::SupportedProtocolVersion) {
        let (server_config, client_config) = configs(version);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = TlsStream::accept(tcp, server_config).await.unwrap();
            assert_eq!(tls.alpn_protocol(), Some(&b"http/1.1"[..]));
            let mut buf = [0; 1000];
            let mut total = 0;
            loop {
                let n = tls.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                total += n;
                tls.write_all(&buf[..n]).await.unwrap();
            }
            // The client's close_notify was read; between records nothing is held.
            assert!(tls.read_closed);
            assert_eq!(
                (tls.incoming.capacity(), tls.plain.capacity()),
                (0, 0),
                "idle holds no buffer"
            );
            tls.shutdown().await.unwrap();
            assert_eq!(tls.outgoing.capacity(), 0);
            total
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(client_config)
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        let (mut rd, mut wr) = tokio::io::split(tls);
        let data = pattern(1 << 20);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let mut at = 0;
            for step in [1, 100, 5000, 16384, 16385, 70_000].iter().cycle() {
                if at == sent.len() {
                    break;
                }
                let end = (at + step).min(sent.len());
                wr.write_all(&sent[at..end]).await.unwrap();
                at = end;
            }
            wr.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        rd.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert_eq!(server.await.unwrap(), data.len());
        assert!(back == data, "echo differs");
    }

    /// TLS 1.3: 1 MiB echoed exactly, `close_notify` both ways, nothing held after.
    #[tokio::test]
    async fn tls13_echo_is_exact_and_closes_cleanly() {
        echo(&rustls::version::TLS13).await;
    }

    /// The same over TLS 1.2, whose records are laid out differently (see
    /// `sealed_len`).
    #[tokio::test]
    async fn tls12_echo_is_exact_and_closes_cleanly() {
        echo(&rustls::version::TLS12).await;
    }

    /// A client that does not trust the certificate fails, and `accept`
    /// returns the error rather than a stream.
    #[tokio::test]
    async fn a_client_that_distrusts_the_certificate_fails_the_handshake() {
        let (server_config, _) = configs(&rustls::version::TLS13);
        // A client trusting another CA rejects the certificate with an alert.
        let (_, client_config) = configs(&rustls::version::TLS13);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsStream::accept(tcp, server_config).await.map(|_| ())
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let client = tokio_rustls::TlsConnector::from(client_config)
            .connect(name, tcp)
            .await;
        assert!(client.is_err());
        assert!(
            server.await.unwrap().is_err(),
            "the server sees the failure"
        );
    }
}
