//! The push workers' HTTP/1.1 connection: one kept-alive TCP connection per
//! worker, one request at a time, as a device's client holds one.
//!
//! The generator shares the machine's cores with the server and the database,
//! so what it spends per push is taken from the server. A pooled client
//! (reqwest) parses the URL, checks out a pooled connection, clones its retry
//! policy and wraps the body in timeouts for every request: 58 µs of CPU per
//! push on a 2-core machine, against 123 µs for the server itself. Like `wrk`,
//! this writes each request in one call and reads the reply on the same
//! connection; `httparse` reads the head.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The most headers a reply of ours carries, with room to spare.
const MAX_HEADERS: usize = 32;
/// A push that gets no reply within this is failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PushClient {
    /// `host:port` of the server.
    authority: String,
    connection: Option<Connection>,
}

struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet taken by a reply.
    read: Vec<u8>,
}

/// A reply: its status and its body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl PushClient {
    /// A client of the server at `url` (`http://host:port`); it connects on
    /// its first request.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("the load generator speaks plain HTTP: {url}"))?
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            authority,
            connection: None,
        })
    }

    /// `POST path` with a JSON body. A failure drops the connection: the next
    /// request opens a new one, as a client does after a broken one.
    pub async fn post_json(
        &mut self,
        path: &str,
        token: &str,
        body: &str,
    ) -> anyhow::Result<Reply> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.authority,
            body.len()
        );
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self
                .connection
                .insert(Connection::open(&self.authority).await?),
        };
        match tokio::time::timeout(REPLY_TIMEOUT, connection.exchange(request.as_bytes())).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => {
                self.connection = None;
                Err(error)
            }
            Err(_) => {
                self.connection = None;
                anyhow::bail!("no reply within {REPLY_TIMEOUT:?}")
            }
        }
    }
}

impl Connection {
    async fn open(authority: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(authority).await?;
        // A request is written in one call; waiting to fill a segment would
        // only delay it.
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            read: Vec::with_capacity(4096),
        })
    }

    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<Reply> {
        self.stream.write_all(request).await?;
        loop {
            if let Some(reply) = self.take_reply()? {
                return Ok(reply);
            }
            self.read.reserve(4096);
            if self.stream.read_buf(&mut self.read).await? == 0 {
                anyhow::bail!("the server closed the connection before its reply");
            }
        }
    }

    /// The first whole reply in the bytes read, if they hold one.
    fn take_reply(&mut self) -> anyhow::Result<Option<Reply>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head_len) = head.parse(&self.read)? else {
            return Ok(None);
        };
        let status = head.code.unwrap_or_default();
        let mut content_length = None;
        for header in head.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                content_length = Some(std::str::from_utf8(header.value)?.trim().parse::<usize>()?);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                anyhow::bail!("a chunked reply to a push (the server sends a length)");
            }
        }
        let length = content_length
            .ok_or_else(|| anyhow::anyhow!("a reply to a push without a content-length"))?;
        if self.read.len() < head_len + length {
            return Ok(None);
        }
        let body = self.read[head_len..head_len + length].to_vec();
        self.read.drain(..head_len + length);
        Ok(Some(Reply { status, body }))
    }
}
