//! A connection with bytes put back in front of it.
//!
//! The front reads a request head before knowing who serves it; when Pingora's proxy
//! does, it must see those bytes again. Plain TCP streams can take them back
//! themselves (`rewind`); this wrapper does it for any stream (TLS included), answering
//! every other question about the connection from the stream inside.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::protocols::{Peek, Stream};
use tokio::io::{AsyncRead, ReadBuf};

/// `inner` with `prefix` to be read first.
#[derive(Debug)]
pub struct Rewound {
    prefix: BytesMut,
    inner: Stream,
}

impl Rewound {
    /// Puts `prefix` back in front of `inner`.
    pub fn new(prefix: BytesMut, inner: Stream) -> Self {
        Self { prefix, inner }
    }
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

super::wrapped::forward_to_inner!(Rewound);

#[async_trait]
impl Peek for Rewound {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        // Read what is asked for (prefix first), then keep it in front.
        let mut taken = BytesMut::with_capacity(buf.len());
        while taken.len() < buf.len() {
            let mut chunk = vec![0u8; buf.len() - taken.len()];
            let n = self.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            taken.extend_from_slice(&chunk[..n]);
        }
        buf.copy_from_slice(&taken);
        let rest = std::mem::take(&mut self.prefix);
        taken.extend_from_slice(&rest);
        self.prefix = taken;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_prefix_is_read_first_and_peeks_do_not_consume() {
        let inner: Stream = Box::new(std::io::Cursor::new(b" world".to_vec()));
        let mut s = Rewound::new(BytesMut::from(&b"hello"[..]), inner);
        let mut peeked = [0u8; 7];
        assert!(s.try_peek(&mut peeked).await.unwrap());
        assert_eq!(&peeked, b"hello w");
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }
}
