//! guard-probe: one network action, one machine-readable line on stdout.
//!
//! ```text
//! guard-probe connect ADDR PORT         TCP connect                 -> ok | errno N NAME
//! guard-probe tfo ADDR PORT             sendto(MSG_FASTOPEN)        -> ok | errno N NAME
//! guard-probe child-connect ADDR PORT   fork; the child connects    -> the child's line
//! guard-probe listen ADDR PORT...       listen, accept forever      -> listening, accepted L P…
//! guard-probe self                      where am I                  -> cgroup=PATH netns=INODE
//! guard-probe storm ADDR PORT N [RATE]  N connects on one socket,   -> refused R other O
//!                                       at most RATE per second
//! guard-probe service ADDR PORT...      a service's main process: connects to each in order
//!                                       first thing, then stays      -> ADDR PORT ok|errno…,
//!                                                                       cgroup=…, ready
//! guard-probe loop ME OTHER PORT        connect to ME:PORT in a loop, to OTHER:PORT every 16th
//!                                       time, until stdin closes    -> counts (see `connect_loop`)
//! ```
//! The test harness starts it already inside the cgroup and netns under test, so every socket
//! it creates belongs to that cgroup. Exit status 2 means bad usage or an unexpected failure
//! (anything but the network action's own errno).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::process::exit;
use std::thread;
use std::time::Duration;

use guard_tests::errno;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Long enough for any connect inside a test netns, short enough that a broken setup fails fast.
const TIMEOUT: Duration = Duration::from_secs(5);
/// What a TFO probe sends in its SYN; any payload will do.
const TFO_PAYLOAD: &[u8] = b"QUIT\r\n";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["connect", addr, port] => println!("{}", verdict(connect(sockaddr(addr, port)))),
        ["tfo", addr, port] => println!("{}", verdict(fast_open(sockaddr(addr, port)))),
        ["child-connect", addr, port] => println!("{}", child_connect(sockaddr(addr, port))),
        ["listen", addr, ports @ ..] if !ports.is_empty() => listen(addr, ports),
        ["self"] => println!("{}", whereabouts()),
        ["storm", addr, port, n] => println!("{}", storm(sockaddr(addr, port), n, None)),
        ["storm", addr, port, n, rate] => {
            println!("{}", storm(sockaddr(addr, port), n, Some(rate)))
        }
        ["service", pairs @ ..] if !pairs.is_empty() && pairs.len() % 2 == 0 => service(pairs),
        ["loop", me, other, port] => connect_loop(sockaddr(me, port), sockaddr(other, port)),
        _ => die(
            "usage: guard-probe connect|tfo|child-connect ADDR PORT | listen ADDR PORT... | self | service ADDR PORT [ADDR PORT]...",
        ),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("guard-probe: {msg}");
    exit(2)
}

fn sockaddr(addr: &str, port: &str) -> SocketAddr {
    let ip: IpAddr = addr
        .parse()
        .unwrap_or_else(|_| die(&format!("bad address {addr:?}")));
    let port: u16 = port
        .parse()
        .unwrap_or_else(|_| die(&format!("bad port {port:?}")));
    SocketAddr::new(ip, port)
}

fn tcp_socket(addr: &SocketAddr) -> io::Result<Socket> {
    Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )
}

/// `ok`, or `errno N NAME` for an OS error. Other errors are not a network verdict: exit 2.
fn verdict(r: io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".to_string(),
        Err(e) => match e.raw_os_error() {
            Some(n) => format!("errno {n} {}", errno::name(n)),
            // socket2's connect_timeout reports a poll timeout without an errno.
            None if e.kind() == io::ErrorKind::TimedOut => {
                format!("errno {} ETIMEDOUT", libc::ETIMEDOUT)
            }
            None => die(&format!("unexpected error: {e}")),
        },
    }
}

fn connect(addr: SocketAddr) -> io::Result<()> {
    // The cgroup connect hook runs synchronously inside connect(2), so a refusal is reported
    // at once even through the non-blocking connect that connect_timeout uses.
    tcp_socket(&addr)?.connect_timeout(&SockAddr::from(addr), TIMEOUT)
}

/// A refusal storm: `n` connects to a refused destination on one socket (a connect the guard
/// refuses leaves the socket unconnected, so it can try again), paced to `rate` per second.
fn storm(addr: SocketAddr, n: &str, rate: Option<&str>) -> String {
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| die("storm: N must be a number"));
    let rate: Option<u64> = rate.map(|r| {
        r.parse()
            .unwrap_or_else(|_| die("storm: RATE must be a number"))
    });
    let s = tcp_socket(&addr).unwrap_or_else(|e| die(&format!("socket: {e}")));
    let sa = SockAddr::from(addr);
    let start = std::time::Instant::now();
    let (mut refused, mut other) = (0u64, 0u64);
    for i in 0..n {
        if let Some(r) = rate.filter(|&r| r > 0) {
            // Pace: connect number i not before i/r seconds.
            let due = Duration::from_nanos(i.saturating_mul(1_000_000_000) / r);
            // Sleeping is coarse: only when a millisecond ahead, then in a burst.
            if let Some(wait) = due.checked_sub(start.elapsed())
                && wait > Duration::from_millis(1)
            {
                thread::sleep(wait);
            }
        }
        match s.connect(&sa) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => refused += 1,
            _ => other += 1,
        }
        if other > 0 {
            break;
        }
    }
    format!("refused {refused} other {other}")
}

fn fast_open(addr: SocketAddr) -> io::Result<()> {
    // No connect(2) at all: the kernel connects inside sendto (needs the client bit of
    // net.ipv4.tcp_fastopen in this netns, which the test sets).
    let s = tcp_socket(&addr)?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let n = s.send_to_with_flags(TFO_PAYLOAD, &SockAddr::from(addr), libc::MSG_FASTOPEN)?;
    if n == 0 {
        die("sendto(MSG_FASTOPEN) sent nothing");
    }
    Ok(())
}

/// Forks; the child (a new process in the same cgroup) connects and reports through a pipe.
fn child_connect(addr: SocketAddr) -> String {
    let mut fds = [0; 2];
    // SAFETY: plain pipe/fork/read/write/waitpid; the probe is single-threaded, so the child
    // may run ordinary Rust code.
    unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            die(&format!("pipe: {}", io::Error::last_os_error()));
        }
        let pid = libc::fork();
        if pid < 0 {
            die(&format!("fork: {}", io::Error::last_os_error()));
        }
        if pid == 0 {
            libc::close(fds[0]);
            let line = verdict(connect(addr));
            let n = libc::write(fds[1], line.as_ptr().cast(), line.len());
            libc::_exit(if n == line.len() as isize { 0 } else { 3 });
        }
        libc::close(fds[1]);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 128];
        loop {
            let n = libc::read(fds[0], chunk.as_mut_ptr().cast(), chunk.len());
            if n <= 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n as usize]);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 || buf.is_empty() {
            die(&format!("child failed (wait status {status:#x})"));
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Connects to `me` as fast as it can, and to `other` every 16th round, until stdin reaches EOF;
/// then prints `me_refused=N me_not_refused=N other_ok=N other_refused=N other_failed=N`
/// (refused = ELOOP). Prints `running` once the first round is done, so the caller knows the
/// loop is in the cgroup and connecting.
fn connect_loop(me: SocketAddr, other: SocketAddr) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = io::stdin().read_to_end(&mut sink);
        STOP.store(true, Ordering::SeqCst);
    });
    let mut counts = [0u64; 5];
    let once = |addr: SocketAddr| -> io::Result<()> {
        let s = tcp_socket(&addr)?;
        // Reset on close: no TIME_WAIT, so ports do not run out over 100 000 connects.
        s.set_linger(Some(Duration::ZERO))?;
        s.connect_timeout(&SockAddr::from(addr), TIMEOUT)
    };
    let mut round: u64 = 0;
    while !STOP.load(Ordering::SeqCst) {
        match once(me) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => counts[0] += 1,
            _ => counts[1] += 1,
        }
        if round.is_multiple_of(16) {
            match once(other) {
                Ok(()) => counts[2] += 1,
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => counts[3] += 1,
                Err(_) => counts[4] += 1,
            }
        }
        if round == 0 {
            println!("running");
            let _ = io::stdout().flush();
        }
        round += 1;
    }
    println!(
        "me_refused={} me_not_refused={} other_ok={} other_refused={} other_failed={}",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    );
}

fn listen(addr: &str, ports: &[&str]) {
    let mut sockets = Vec::new();
    for port in ports {
        let sa = sockaddr(addr, port);
        let bound = (|| -> io::Result<Socket> {
            let s = tcp_socket(&sa)?;
            if sa.is_ipv6() {
                // `::` then also takes IPv4 (and v4-mapped) connections.
                s.set_only_v6(false)?;
            }
            s.set_reuse_address(true)?;
            s.bind(&SockAddr::from(sa))?;
            s.listen(128)?;
            Ok(s)
        })();
        match bound {
            Ok(s) => sockets.push(s),
            Err(e) => die(&format!("cannot listen on {sa}: {e}")),
        }
    }
    println!("listening");
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|s| thread::spawn(move || accept_forever(s)))
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

fn accept_forever(s: Socket) {
    loop {
        match s.accept() {
            Ok((conn, peer)) => {
                let local = conn.local_addr().ok().and_then(|a| a.as_socket());
                let fmt =
                    |a: Option<SocketAddr>| a.map_or("?".to_string(), |a| unmap(a).to_string());
                let mut out = io::stdout().lock();
                let _ = writeln!(out, "accepted {} {}", fmt(local), fmt(peer.as_socket()));
                let _ = out.flush();
                // Read what a TFO client sent, so closing does not turn into a reset; in a
                // thread, so a silent client does not delay the next accept.
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut buf = [0u8; 64];
                    let _ = (&conn).read(&mut buf);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => die(&format!("accept: {e}")),
        }
    }
}

/// `[::ffff:a.b.c.d]:p` as `a.b.c.d:p`: a dual-stack listener sees IPv4 peers v4-mapped.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

/// Stands in for a daemon such as qmail-send: its very first actions are the connects (so a
/// guard attached late shows up as a connect that was not refused), then it reports where it
/// runs and stays until killed.
fn service(pairs: &[&str]) -> ! {
    let mut out = io::stdout().lock();
    for pair in pairs.chunks(2) {
        let v = verdict(connect(sockaddr(pair[0], pair[1])));
        let _ = writeln!(out, "{} {} {v}", pair[0], pair[1]);
    }
    let _ = writeln!(out, "{}", whereabouts());
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    drop(out);
    loop {
        // SAFETY: pause(2) has no preconditions; it returns only after a handled signal.
        unsafe { libc::pause() };
    }
}

fn whereabouts() -> String {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_else(|e| die(&format!("/proc/self/cgroup: {e}")));
    let cgroup = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| die("no cgroup2 line in /proc/self/cgroup"));
    let netns = std::fs::metadata("/proc/self/ns/net")
        .unwrap_or_else(|e| die(&format!("/proc/self/ns/net: {e}")))
        .ino();
    format!("cgroup={cgroup} netns={netns}")
}
