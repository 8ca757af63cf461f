//! The observability endpoint: `/healthz`, `/metrics`, `/status`, `/latest.png` and a live
//! page at `/`.
//!
//! A few requests a minute from Prometheus and the odd person with a browser, but the endpoint
//! must never take the line down, whatever a client sends. So it is a small HTTP/1.1 server on
//! `std::net` with every resource bounded, rather than a general server crate: tiny_http 0.12
//! aborts the process on a huge `Content-Length` (its body reader allocates it on drop) and
//! serves every client from one thread; an async stack would be a runtime in the daemon for
//! four GET routes.
//!
//! - One request per connection (`Connection: close`); a request body is never read.
//! - The request head is read up to [`MAX_HEAD`] bytes, all of it within [`DEADLINE`]; a
//!   response is written within the same deadline, however few bytes the client takes at a
//!   time. A slow or silent client holds one worker
//!   for at most that long.
//! - [`WORKERS`] threads serve connections from a queue of [`QUEUE`]; when it is full the
//!   connection is answered 503 at once by the accept thread and closed, so a flood of clients
//!   degrades to refusals, never to a blocked daemon or unbounded threads.
//!
//! It binds `127.0.0.1` by default; exposing it is a deliberate configuration change.

use std::io::{Cursor, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError, bounded};

use super::archive::{OverlaySource, render_overlay};
use super::metrics::Metrics;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a connection may take to send its request head, and to take its response.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// The least time a connection that waited in the queue gets to deliver its request head.
pub const QUEUED_GRACE: Duration = Duration::from_millis(50);
/// Threads serving connections.
pub const WORKERS: usize = 4;
/// Accepted connections waiting for a worker; beyond this they are refused with 503.
pub const QUEUE: usize = 16;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {message}")]
pub struct HttpError {
    /// The configured address.
    pub addr: SocketAddr,
    /// The reason.
    pub message: String,
}

/// A running endpoint; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port) and serves `metrics` on a few threads.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Self, HttpError> {
        let fail = |e: std::io::Error| HttpError {
            addr,
            message: e.to_string(),
        };
        let listener = TcpListener::bind(addr).map_err(fail)?;
        let bound = listener.local_addr().map_err(fail)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (queue, connections) = bounded::<(TcpStream, Instant)>(QUEUE);
        let mut threads = Vec::with_capacity(WORKERS + 1);
        for i in 0..WORKERS {
            let connections: Receiver<(TcpStream, Instant)> = connections.clone();
            let metrics = Arc::clone(&metrics);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ustad-http-{i}"))
                    .spawn(move || {
                        for (stream, accepted) in connections {
                            serve(stream, accepted, &metrics);
                        }
                    })
                    .map_err(fail)?,
            );
        }
        let stopping = Arc::clone(&stop);
        threads.push(
            std::thread::Builder::new()
                .name("ustad-http-accept".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stopping.load(Ordering::Acquire) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        match queue.try_send((stream, Instant::now())) {
                            Ok(()) => {}
                            Err(TrySendError::Full((stream, _))) => refuse_busy(stream),
                            Err(TrySendError::Disconnected(_)) => break,
                        }
                    }
                    // Dropping `queue` ends the workers once they finish their connection.
                })
                .map_err(fail)?,
        );
        log::info!("observability endpoint on http://{bound}/");
        Ok(HttpServer {
            addr: bound,
            stop,
            threads,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept thread: it sees the flag on the next connection.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A response to write: status, content type and body.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn text(status: u16, body: &str) -> Self {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }
}

/// All workers busy: say so without reading anything, and close.
fn refuse_busy(mut stream: TcpStream) {
    let by = Instant::now() + Duration::from_millis(200);
    let _ = write_reply(&mut stream, &Reply::text(503, "busy\n"), false, by);
    let _ = stream.shutdown(Shutdown::Both);
}

/// Serves one connection: one bounded request head, one response, close.
///
/// The head must arrive within [`DEADLINE`] of the connection's acceptance, so a connection
/// that waited in the queue behind slow clients gets only what is left, at least
/// [`QUEUED_GRACE`]: a request already sent is read at once, a silent client queued for its
/// whole deadline is dropped in that grace instead of holding a worker for another deadline
/// (slow clients arriving together would otherwise delay everyone by their number × the
/// deadline / [`WORKERS`]). The reply then has a deadline of its own.
fn serve(mut stream: TcpStream, accepted: Instant, metrics: &Metrics) {
    let head_by = (accepted + DEADLINE).max(Instant::now() + QUEUED_GRACE);
    let (reply, head_only) = match read_head(&mut stream, head_by) {
        Ok(head) => match parse_request_line(&head) {
            Some((method, path)) if method == "GET" || method == "HEAD" => {
                (route(path, metrics), method == "HEAD")
            }
            Some(_) => (Reply::text(405, "GET only\n"), false),
            None => (Reply::text(400, "bad request line\n"), false),
        },
        Err(HeadError::TooLarge) => (Reply::text(431, "request head too large\n"), false),
        Err(HeadError::Closed) => return,
    };
    let _ = write_reply(&mut stream, &reply, head_only, Instant::now() + DEADLINE);
    let _ = stream.shutdown(Shutdown::Both);
}

/// What is left until `by` (never zero: zero means "block" to std).
fn remaining(by: Instant) -> Duration {
    by.saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

enum HeadError {
    /// The head did not end within [`MAX_HEAD`] bytes.
    TooLarge,
    /// The client closed, timed out or failed before the head ended.
    Closed,
}

/// Reads up to the blank line that ends the request head, within [`MAX_HEAD`] bytes and the
/// instant `by`. Whatever follows (a body, pipelined requests) is never read.
fn read_head(stream: &mut TcpStream, by: Instant) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        if Instant::now() >= by {
            return Err(HeadError::Closed);
        }
        stream
            .set_read_timeout(Some(remaining(by)))
            .map_err(|_| HeadError::Closed)?;
        let room = (MAX_HEAD + 1 - head.len()).min(buf.len());
        let n = match stream.read(&mut buf[..room]) {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(n) => n,
        };
        let scan_from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head[scan_from..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(scan_from + end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// `(method, path without query)` of a request head, if its first line is well formed.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or("/")))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_reply(
    stream: &mut TcpStream,
    reply: &Reply,
    head_only: bool,
    by: Instant,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(&reply.body);
    }
    write_by(stream, &out, by)
}

/// A writer whose every write can be bounded in time (a socket's `SO_SNDTIMEO`).
trait TimedWrite: Write {
    fn set_write_timeout(&mut self, timeout: Duration) -> std::io::Result<()>;
}

impl TimedWrite for TcpStream {
    fn set_write_timeout(&mut self, timeout: Duration) -> std::io::Result<()> {
        TcpStream::set_write_timeout(self, Some(timeout))
    }
}

/// Writes all of `bytes` by the instant `by`, or fails. The write timeout is set to what is
/// left before every write: a socket timeout alone restarts with each write, so a client that
/// reads a few bytes at a time could hold a worker for as long as it likes.
fn write_by(out: &mut impl TimedWrite, mut bytes: &[u8], by: Instant) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    while !bytes.is_empty() {
        let left = by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::new(ErrorKind::TimedOut, "reply deadline passed"));
        }
        out.set_write_timeout(left)?;
        match out.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.flush()
}

fn route(path: &str, metrics: &Metrics) -> Reply {
    match path {
        "/healthz" => {
            let (ok, why) = metrics.health();
            Reply {
                status: if ok { 200 } else { 503 },
                content_type: "text/plain; charset=utf-8",
                body: format!("{why}\n").into_bytes(),
            }
        }
        "/metrics" => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.prometheus().into_bytes(),
        },
        "/status" => {
            let (healthy, health) = metrics.health();
            let body = serde_json::json!({
                "healthy": healthy,
                "health": health,
                "counters": metrics.snapshot(),
            });
            Reply {
                status: 200,
                content_type: "application/json",
                body: serde_json::to_vec_pretty(&body).unwrap_or_default(),
            }
        }
        "/latest.png" => match metrics.latest() {
            None => Reply::text(404, "no frame judged yet\n"),
            Some(l) => {
                let overlay = render_overlay(&OverlaySource {
                    image: l.image,
                    map: l.map,
                    map_width: l.map_width,
                    map_height: l.map_height,
                    threshold: l.threshold,
                });
                let mut png = Vec::new();
                match overlay.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png) {
                    Ok(()) => Reply {
                        status: 200,
                        content_type: "image/png",
                        body: png,
                    },
                    Err(e) => Reply::text(500, &e.to_string()),
                }
            }
        },
        "/" | "/index.html" => Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: LIVE_PAGE.as_bytes().to_vec(),
        },
        _ => Reply::text(404, "not found\n"),
    }
}

/// The live page: the latest judged region with its anomaly overlay and the counters,
/// refreshed every second by a few lines of script (no external assets: the line PC may have
/// no internet).
const LIVE_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ustad</title>
<style>
body{font-family:sans-serif;background:#111;color:#eee;margin:1em}
img{width:min(90vw,512px);image-rendering:pixelated;border:1px solid #444}
td{padding:0 1em 0 0}.bad{color:#f55}.ok{color:#5f5}
</style></head>
<body><h1>ustad</h1>
<p id="health">…</p>
<img id="frame" src="/latest.png" alt="latest judged frame">
<table id="counters"></table>
<script>
async function tick(){
  try{
    const s=await (await fetch('/status',{cache:'no-store'})).json();
    const h=document.getElementById('health');
    h.textContent=s.health; h.className=s.healthy?'ok':'bad';
    const c=s.counters, v=c.verdicts, lp=c.last_part||{};
    const rows=[['source',c.source],['bundle',c.bundle],['threshold',c.threshold.toFixed(3)],
      ['frames',c.frames],['parts',c.parts],['pass',v.pass||0],['reject',v.reject||0],
      ['fail-safe reject',v.failsafe_reject||0],['fail-safe pass',v.failsafe_pass||0],
      ['pulses fired',c.actuator.pulses],['missed',c.actuator.missed],
      ['latency median / p99 (ms)',c.latency_actuator.median_ms.toFixed(1)+' / '+c.latency_actuator.p99_ms.toFixed(1)],
      ['queue',c.queue_depth],['last part',(lp.part??'-')+' '+(lp.verdict??'')+' '+(lp.score!=null?lp.score.toFixed(3):'')+' '+(lp.origin??'')]];
    document.getElementById('counters').innerHTML=rows.map(r=>'<tr><td>'+r[0]+'</td><td>'+String(r[1]).replace(/</g,'&lt;')+'</td></tr>').join('');
    document.getElementById('frame').src='/latest.png?t='+Date.now();
  }catch(e){document.getElementById('health').textContent='daemon unreachable';}
}
setInterval(tick,1000);tick();
</script></body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// A client that takes at most `per_write` bytes per write, `delay` apart, whatever the
    /// timeout asks.
    struct Client {
        delay: Duration,
        per_write: usize,
        got: Vec<u8>,
    }

    impl Write for Client {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(self.delay);
            let n = buf.len().min(self.per_write);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl TimedWrite for Client {
        fn set_write_timeout(&mut self, _: Duration) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reply_is_bounded_by_one_deadline_not_one_per_write() {
        // One byte every 5 ms: 1000 bytes would take 5 s; the deadline is 100 ms.
        let mut slow = Client {
            delay: Duration::from_millis(5),
            per_write: 1,
            got: Vec::new(),
        };
        let started = Instant::now();
        let result = write_by(&mut slow, &[7; 1000], started + Duration::from_millis(100));
        let err = result.expect_err("the deadline must stop the reply");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(
            !slow.got.is_empty() && slow.got.len() < 1000,
            "{}",
            slow.got.len()
        );
        // A client that keeps up gets every byte.
        let mut fast = Client {
            delay: Duration::ZERO,
            per_write: 3,
            got: Vec::new(),
        };
        let by = Instant::now() + Duration::from_secs(5);
        write_by(&mut fast, b"hello world", by).expect("written");
        assert_eq!(fast.got, b"hello world");
    }

    /// A minimal HTTP/1.0 GET: status code and body.
    pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("read");
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("header end");
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        (status, buf[split + 4..].to_vec())
    }

    #[test]
    fn endpoints_answer() {
        let metrics = Arc::new(Metrics::new(Duration::from_secs(5)));
        let server = HttpServer::start("127.0.0.1:0".parse().expect("addr"), Arc::clone(&metrics))
            .expect("start");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(get(addr, "/healthz").0, 503, "no frame yet");
        metrics.frame_arrived();
        assert_eq!(get(addr, "/healthz").0, 200);
        let (code, body) = get(addr, "/metrics");
        assert_eq!(code, 200);
        assert!(String::from_utf8_lossy(&body).contains("ustad_frames_total 1"));
        let (code, body) = get(addr, "/status");
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["counters"]["frames"], 1);
        assert_eq!(get(addr, "/latest.png").0, 404);
        metrics.part_decided(
            &super::super::metrics::PartEvent {
                verdict: ustad_core::judge::decide::Verdict::Pass,
                reason: None,
                to_verdict: Duration::from_millis(1),
                to_actuator: Duration::from_millis(1),
                inference: None,
            },
            super::super::metrics::LastPart {
                part: 0,
                origin: "x".into(),
                verdict: ustad_core::judge::decide::Verdict::Pass,
                score: Some(0.1),
            },
            Some(super::super::metrics::LatestFrame {
                image: Arc::new(image::RgbImage::new(8, 8)),
                map: Arc::new(vec![0.5; 16]),
                map_width: 4,
                map_height: 4,
                threshold: 1.0,
            }),
        );
        let (code, body) = get(addr, "/latest.png");
        assert_eq!(code, 200);
        assert_eq!(&body[1..4], b"PNG");
        let (code, body) = get(addr, "/");
        assert_eq!(code, 200);
        assert!(String::from_utf8_lossy(&body).contains("/latest.png"));
        assert_eq!(get(addr, "/nope").0, 404);
        drop(server);
    }

    /// Sends `request` raw and returns the status code of the answer.
    fn raw(addr: SocketAddr, request: &[u8]) -> u16 {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request).expect("send");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf)
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status")
    }

    fn server() -> (HttpServer, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(Duration::from_secs(5)));
        metrics.frame_arrived();
        let server = HttpServer::start("127.0.0.1:0".parse().expect("addr"), Arc::clone(&metrics))
            .expect("start");
        (server, metrics)
    }

    #[test]
    fn a_huge_content_length_is_never_allocated() {
        // tiny_http 0.12 aborted the process on these two requests.
        let (server, _metrics) = server();
        let addr = server.local_addr();
        let post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n";
        assert_eq!(raw(addr, post), 405);
        let get_with_body =
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n";
        assert_eq!(raw(addr, get_with_body), 200);
        assert_eq!(get(addr, "/healthz").0, 200, "still serving");
    }

    #[test]
    fn oversized_and_malformed_heads_are_refused() {
        let (server, _metrics) = server();
        let addr = server.local_addr();
        let mut big = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2 * MAX_HEAD));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(raw(addr, &big), 431);
        assert_eq!(raw(addr, b"garbage\r\n\r\n"), 400);
        assert_eq!(get(addr, "/healthz").0, 200);
    }

    #[test]
    fn stalled_and_flooding_clients_do_not_starve_others() {
        let (server, _metrics) = server();
        let addr = server.local_addr();
        // Clients that connect and send nothing, more than there are workers…
        let silent: Vec<TcpStream> = (0..WORKERS + 2)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        // …and one that pipelines requests and never reads the answers.
        let mut flood = TcpStream::connect(addr).expect("connect");
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        for _ in 0..2000 {
            if flood.write_all(request).is_err() {
                break;
            }
        }
        // Another client is still answered within a few deadlines.
        let started = Instant::now();
        assert_eq!(get(addr, "/healthz").0, 200);
        assert!(started.elapsed() < 4 * DEADLINE, "{:?}", started.elapsed());
        drop(silent);
    }

    #[test]
    fn a_crowd_of_silent_clients_delays_others_by_about_one_deadline() {
        let (server, _metrics) = server();
        let addr = server.local_addr();
        // Enough silent clients to fill every worker and most of the queue: served one
        // deadline each, they would hold the next request for (18 / 4) × 2 s ≈ 9 s.
        let silent: Vec<TcpStream> = (0..WORKERS + QUEUE - 2)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        assert_eq!(get(addr, "/healthz").0, 200);
        let waited = started.elapsed();
        assert!(waited < DEADLINE + Duration::from_secs(1), "{waited:?}");
        drop(silent);
    }
}
