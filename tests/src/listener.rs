//! TCP listeners inside a netns, so that an "allowed" connect is a real, completed connection
//! and not an ECONNREFUSED that would be indistinguishable from a broken setup.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd;
use crate::netns::Netns;
use crate::probe;

/// A `guard-probe listen ADDR PORT…` process in a netns (not in any test cgroup), accepting
/// forever. It logs each accepted connection; Drop kills it.
pub struct Listener {
    child: Child,
    accepted: Arc<Mutex<Vec<Accepted>>>,
}

/// One accepted connection: the listener-side and the peer-side address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub local: String,
    pub peer: String,
}

impl Listener {
    /// Listens on `addr` (use `::` for every v4 and v6 address) on each port, inside `netns`.
    /// Returns once the sockets are listening.
    pub fn new(netns: &Netns, addr: &str, ports: &[u16]) -> Listener {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut args = vec!["listen", addr];
        args.extend(ports.iter().map(String::as_str));
        let mut c = probe::probe_command(None, netns, &args);
        c.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", cmd::describe(&c)));
        let mut lines = BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        let _ = lines.read_line(&mut first);
        if first.trim() != "listening" {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{}` did not start listening: {first:?}", cmd::describe(&c));
        }
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&accepted);
        // The reader thread ends when the listener is killed (EOF on the pipe).
        thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                let mut w = line.split_whitespace();
                if let (Some("accepted"), Some(local), Some(peer)) = (w.next(), w.next(), w.next())
                {
                    log.lock().unwrap().push(Accepted {
                        local: local.to_string(),
                        peer: peer.to_string(),
                    });
                }
            }
        });
        Listener { child, accepted }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted.lock().unwrap().clone()
    }

    /// Waits up to 5 s for an accepted connection matching `pred` (accept and logging happen
    /// after the client's connect has already returned).
    pub fn wait_accepted(&self, pred: impl Fn(&Accepted) -> bool) -> Option<Accepted> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(a) = self.accepted().into_iter().find(&pred) {
                return Some(a);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
