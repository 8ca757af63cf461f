//! The observability endpoint: `/healthz`, `/metrics`, `/status`, `/latest.png` and a live
//! page at `/`.
//!
//! A few requests a minute from Prometheus and the odd person with a browser: one thread with
//! a blocking server (`tiny_http`) is plenty and keeps an async runtime out of the daemon.
//! It binds `127.0.0.1` by default; exposing it is a deliberate configuration change.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response, Server};

use super::archive::{OverlaySource, render_overlay};
use super::metrics::Metrics;

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
    server: Arc<Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port) and serves `metrics` on a thread.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Self, HttpError> {
        let server = Server::http(addr).map_err(|e| HttpError {
            addr,
            message: e.to_string(),
        })?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("ustad-http".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    handle(request, &metrics);
                }
            })
            .map_err(|e| HttpError {
                addr,
                message: e.to_string(),
            })?;
        log::info!("observability endpoint on http://{bound}/");
        Ok(HttpServer {
            server,
            addr: bound,
            thread: Some(thread),
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
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn respond(request: Request, status: u16, content_type: &str, body: Vec<u8>) {
    let mut response = Response::from_data(body).with_status_code(status);
    if let Some(h) = header("Content-Type", content_type) {
        response.add_header(h);
    }
    if let Some(h) = header("Cache-Control", "no-store") {
        response.add_header(h);
    }
    if let Err(e) = request.respond(response) {
        log::debug!("http: client went away: {e}");
    }
}

fn handle(request: Request, metrics: &Metrics) {
    if *request.method() != Method::Get && *request.method() != Method::Head {
        return respond(request, 405, "text/plain", b"GET only\n".to_vec());
    }
    let path = request.url().split('?').next().unwrap_or("/").to_string();
    match path.as_str() {
        "/healthz" => {
            let (ok, why) = metrics.health();
            respond(
                request,
                if ok { 200 } else { 503 },
                "text/plain; charset=utf-8",
                format!("{why}\n").into_bytes(),
            )
        }
        "/metrics" => respond(
            request,
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.prometheus().into_bytes(),
        ),
        "/status" => {
            let (healthy, health) = metrics.health();
            let body = serde_json::json!({
                "healthy": healthy,
                "health": health,
                "counters": metrics.snapshot(),
            });
            respond(
                request,
                200,
                "application/json",
                serde_json::to_vec_pretty(&body).unwrap_or_default(),
            )
        }
        "/latest.png" => match metrics.latest() {
            None => respond(
                request,
                404,
                "text/plain",
                b"no frame judged yet\n".to_vec(),
            ),
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
                    Ok(()) => respond(request, 200, "image/png", png),
                    Err(e) => respond(request, 500, "text/plain", e.to_string().into_bytes()),
                }
            }
        },
        "/" | "/index.html" => respond(
            request,
            200,
            "text/html; charset=utf-8",
            LIVE_PAGE.as_bytes().to_vec(),
        ),
        _ => respond(request, 404, "text/plain", b"not found\n".to_vec()),
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
                verdict: super::super::metrics::VerdictKind::Pass,
                reason: None,
                to_verdict: Duration::from_millis(1),
                to_actuator: Duration::from_millis(1),
                inference: None,
            },
            super::super::metrics::LastPart {
                part: 0,
                origin: "x".into(),
                verdict: super::super::metrics::VerdictKind::Pass,
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
}
