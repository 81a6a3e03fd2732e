//! DNS for the qmail-remote tests: a real dnsmasq inside a netns, answering only for `.test`
//! from its own records, with /etc/netns/NAME/resolv.conf pointing at it (bind-mounted over
//! /etc/resolv.conf by `ip netns exec`). A tiny SERVFAIL server can be put behind a subdomain,
//! since dnsmasq itself never invents SERVFAIL.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::netns::Netns;
use crate::smtp_sink::in_netns;

/// Port of the SERVFAIL server (on 127.0.0.1 of the netns).
pub const SERVFAIL_PORT: u16 = 5353;

/// A dnsmasq process serving `records` in a netns. Drop kills it and removes the netns'
/// /etc/netns directory.
pub struct Dnsmasq {
    child: Child,
    etc: PathBuf,
    conf: PathBuf,
    servfail: Option<ServfailServer>,
}

impl Dnsmasq {
    /// Starts dnsmasq on 127.0.0.1:53 of `ns`. `records` are dnsmasq options without the
    /// leading `--` (e.g. `mx-host=a.test,mx.a.test,10`, `host-record=mx.a.test,192.0.2.5`).
    /// Names under `servfail.test` are forwarded to a server that always answers SERVFAIL.
    pub fn start(ns: &Netns, records: &[&str]) -> Dnsmasq {
        let etc = PathBuf::from("/etc/netns").join(ns.name());
        fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("mkdir {}: {e}", etc.display()));
        fs::write(
            etc.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n",
        )
        .expect("write resolv.conf");
        let servfail = ServfailServer::start(ns);
        let conf = std::env::temp_dir().join(format!("{}-dnsmasq.conf", ns.name()));
        let mut c = String::from(
            "no-resolv\nno-hosts\nno-poll\nlisten-address=127.0.0.1\nbind-interfaces\nport=53\n\
             local=/test/\nlog-facility=-\nlog-queries\npid-file=\nuser=root\n",
        );
        c.push_str(&format!(
            "server=/servfail.test/127.0.0.1#{SERVFAIL_PORT}\n"
        ));
        for r in records {
            c.push_str(r);
            c.push('\n');
        }
        fs::write(&conf, c).expect("write dnsmasq.conf");
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .arg(format!("--conf-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dnsmasq (apt-get install dnsmasq-base): {e}"));
        let mut lines = BufReader::new(child.stderr.take().expect("piped"));
        let mut log = String::new();
        loop {
            let mut l = String::new();
            if lines.read_line(&mut l).unwrap_or(0) == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("dnsmasq exited before it started:\n{log}");
            }
            log.push_str(&l);
            if l.contains("started") {
                break;
            }
        }
        // keep draining the log so dnsmasq never blocks on a full pipe; shown on failures
        thread::spawn(move || {
            for l in lines.lines().map_while(Result::ok) {
                if std::env::var_os("QR_DNS_LOG").is_some() {
                    eprintln!("{l}");
                }
            }
        });
        Dnsmasq {
            child,
            etc,
            conf,
            servfail: Some(servfail),
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.servfail.take();
        let _ = fs::remove_dir_all(&self.etc);
        let _ = fs::remove_file(&self.conf);
    }
}

/// A UDP server on 127.0.0.1:SERVFAIL_PORT of a netns that answers every query with SERVFAIL.
struct ServfailServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServfailServer {
    fn start(ns: &Netns) -> ServfailServer {
        let sock = in_netns(ns, || UdpSocket::bind(("127.0.0.1", SERVFAIL_PORT)))
            .unwrap_or_else(|e| panic!("bind servfail server: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = servfail_reply(&buf[..n]) {
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        ServfailServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ServfailServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The SERVFAIL answer to a query: same id and question, QR set, RCODE 2, no records.
fn servfail_reply(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // end of the first question: labels, root, type, class
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += 1 + usize::from(q[i]);
    }
    let end = i + 5;
    if end > q.len() {
        return None;
    }
    let mut r = Vec::with_capacity(end);
    r.extend_from_slice(&q[..2]);
    r.push(0x80 | (q[2] & 0x01)); // QR, keep RD
    r.push(0x80 | 0x02); // RA, SERVFAIL
    r.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    r.extend_from_slice(&q[12..end]);
    Some(r)
}
