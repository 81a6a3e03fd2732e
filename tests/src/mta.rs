//! A real MTA for the qmail-remote delivery test and the demo: Exim from Debian's
//! exim4-daemon-light, run from the private copy `cargo xtask setup` unpacks (see
//! [`crate::exim_prefix`]), never an installed one. It runs in the foreground inside a netns
//! with its own configuration (`-C`), spool, log and Maildir, so it touches nothing of the
//! host's mail system. Delivered messages land in the Maildir.
//!
//! The binary looks up its compiled-in account `Debian-exim` before it reads any
//! configuration. That account exists only where the exim4 packages are installed, so the
//! daemon runs in a mount namespace of its own in which /etc/passwd and /etc/group are copies
//! with the account added (mapped to the overflow ids 65534); the host's files stay unchanged.
//! After receiving a message Exim re-executes itself as that account, which cannot enter a
//! private prefix under root's home, so the same namespace also bind-mounts the prefix into
//! the instance's world-readable directory and Exim runs from there.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::exim_prefix;
use crate::netns::Netns;
use crate::nsenter;
use crate::unique::unique_name;

/// The account compiled into Debian's exim binary (EXIM_USER/EXIM_GROUP=ref:Debian-exim).
const EXIM_USER: &str = "Debian-exim";
/// Its ids inside the private mount namespace: the kernel's overflow ids (nobody/nogroup).
const EXIM_ID: u32 = 65534;

/// A running Exim daemon. Drop stops it and removes its directory.
pub struct Exim {
    child: Child,
    dir: PathBuf,
}

/// A copy of the host's account file `host` with `EXIM_USER` (re)defined by `line`.
fn accounts_with(host: &str, line: &str) -> String {
    let prefix = format!("{EXIM_USER}:");
    let mut out: String = fs::read_to_string(host)
        .unwrap_or_else(|e| panic!("cannot read {host}: {e}"))
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .flat_map(|l| [l, "\n"])
        .collect();
    out.push_str(line);
    out.push('\n');
    out
}

/// Makes the child enter the netns at `netns`, then a private mount namespace in which each
/// `(source, target)` of `binds` is bind-mounted.
fn enter_with_binds(cmd: &mut Command, netns: &Path, binds: &[(&Path, &Path)]) {
    // Allocated before fork: only async-signal-safe calls are allowed in the hook.
    let netns = nsenter::cstring(netns);
    let binds: Vec<(CString, CString)> = binds
        .iter()
        .map(|(src, dst)| (nsenter::cstring(src), nsenter::cstring(dst)))
        .collect();
    let hook = move || -> io::Result<()> {
        // SAFETY: join_netns and private_binds are async-signal-safe.
        unsafe {
            nsenter::join_netns(&netns)?;
            nsenter::private_binds(&binds)
        }
    };
    // SAFETY: the hook is async-signal-safe (see above).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Optional server features for [`Exim::start_with`].
#[derive(Clone, Debug, Default)]
pub struct EximOptions {
    /// STARTTLS with this certificate chain and key (PEM files, readable by everyone).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Also listen on this port with TLS from the first byte (SMTPS); needs `tls`.
    pub smtps_port: Option<u16>,
    /// SASL mechanisms to offer (`PLAIN`, `LOGIN`, `CRAM-MD5`), in this order, accepting `user`
    /// / `password` below.
    pub auth: Vec<&'static str>,
    /// The one account the authenticators accept.
    pub user: &'static str,
    pub password: &'static str,
    /// `message_size_limit` (Exim's default, 50M, is announced as SIZE 52428800).
    pub size_limit: Option<&'static str>,
    /// Ask TLS clients for a certificate and verify it against this CA file
    /// (`tls_try_verify_hosts`; the log shows `CV=yes` and the client's `DN=`).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients that present no valid certificate (`tls_verify_hosts`).
    pub require_client_cert: bool,
}

fn main_options(o: &EximOptions, addr: &str, port: u16) -> String {
    let mut ports = vec![port];
    ports.extend(o.smtps_port);
    let ifaces: Vec<String> = ports.iter().map(|p| format!("{addr}.{p}")).collect();
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut m = format!(
        "local_interfaces = <; {}\ndaemon_smtp_ports = {}\n",
        ifaces.join(" ; "),
        list.join(" : ")
    );
    match &o.tls {
        Some((cert, key)) => m.push_str(&format!(
            "tls_advertise_hosts = *\ntls_certificate = {}\ntls_privatekey = {}\n\
             log_selector = +tls_sni +tls_peerdn +tls_certificate_verified\n",
            cert.display(),
            key.display()
        )),
        None => m.push_str("tls_advertise_hosts =\n"),
    }
    if let Some(ca) = &o.client_ca {
        let hosts = if o.require_client_cert {
            "tls_verify_hosts"
        } else {
            "tls_try_verify_hosts"
        };
        m.push_str(&format!(
            "tls_verify_certificates = {}\n{hosts} = *\n",
            ca.display()
        ));
    }
    if let Some(p) = o.smtps_port {
        m.push_str(&format!("tls_on_connect_ports = {p}\n"));
    }
    if let Some(l) = o.size_limit {
        m.push_str(&format!("message_size_limit = {l}\n"));
    }
    m
}

fn authenticators(o: &EximOptions) -> String {
    if o.auth.is_empty() {
        return String::new();
    }
    let (u, p) = (o.user, o.password);
    let mut a = String::from("begin authenticators\n");
    for mech in &o.auth {
        a.push_str(&match *mech {
            "PLAIN" => format!(
                "plain:\n  driver = plaintext\n  public_name = PLAIN\n  server_prompts = :\n  \
                 server_condition = ${{if and {{{{eq{{$auth2}}{{{u}}}}}{{eq{{$auth3}}{{{p}}}}}}}}}\n  \
                 server_set_id = $auth2\n"
            ),
            "LOGIN" => format!(
                "login:\n  driver = plaintext\n  public_name = LOGIN\n  \
                 server_prompts = Username:: : Password::\n  \
                 server_condition = ${{if and {{{{eq{{$auth1}}{{{u}}}}}{{eq{{$auth2}}{{{p}}}}}}}}}\n  \
                 server_set_id = $auth1\n"
            ),
            "CRAM-MD5" => format!(
                "cram_md5:\n  driver = cram_md5\n  public_name = CRAM-MD5\n  \
                 server_secret = ${{if eq{{$auth1}}{{{u}}}{{{p}}}fail}}\n  \
                 server_set_id = $auth1\n"
            ),
            other => panic!("no Exim authenticator for {other}"),
        });
    }
    a
}

impl Exim {
    /// Starts the private Exim listening on `addr`:`port` inside `ns`, accepting mail for any
    /// recipient and delivering it to a Maildir.
    pub fn start(ns: &Netns, addr: &str, port: u16) -> Exim {
        Self::start_with(ns, addr, port, &EximOptions::default())
    }

    /// [`Exim::start`] with TLS, SMTPS, AUTH or a size limit.
    pub fn start_with(ns: &Netns, addr: &str, port: u16, opts: &EximOptions) -> Exim {
        let prefix = exim_prefix::current().unwrap_or_else(|e| panic!("{e}"));
        let dir = std::env::temp_dir().join(format!("{}-exim", unique_name()));
        for d in ["spool", "log", "Maildir"] {
            let p = dir.join(d);
            fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            chown(&p, Some(EXIM_ID), Some(EXIM_ID)).expect("chown");
        }
        // The mount point of the prefix; the binary is run (and re-run) from here.
        let mounted = dir.join("prefix");
        fs::create_dir(&mounted).expect("mkdir prefix");
        let exim = mounted.join(exim_prefix::BINARY);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let passwd = dir.join("passwd");
        let group = dir.join("group");
        let account =
            format!("{EXIM_USER}:x:{EXIM_ID}:{EXIM_ID}:test MTA:/nonexistent:/usr/sbin/nologin");
        fs::write(&passwd, accounts_with("/etc/passwd", &account)).expect("write passwd");
        fs::write(
            &group,
            accounts_with("/etc/group", &format!("{EXIM_USER}:x:{EXIM_ID}:")),
        )
        .expect("write group");
        let d = dir.display();
        let main = main_options(opts, addr, port);
        let auth = authenticators(opts);
        // exim_path: the daemon re-executes itself (with this -C) for some deliveries; the
        // compiled-in /usr/sbin/exim4 may not exist or may be the host's MTA.
        let conf = format!(
            "primary_hostname = mx.example.test\n\
             qualify_domain = example.test\n\
             exim_path = {exim}\n\
             spool_directory = {d}/spool\n\
             log_file_path = {d}/log/%slog\n\
             exim_user = {EXIM_USER}\n\
             exim_group = {EXIM_USER}\n\
             never_users = root\n\
             {main}\
             acl_smtp_rcpt = acl_rcpt\n\
             host_lookup =\n\
             rfc1413_hosts =\n\
             keep_environment =\n\
             received_header_text = Received: by exim test\n\
             begin acl\n\
             acl_rcpt:\n  accept\n\
             begin routers\n\
             all:\n  driver = accept\n  transport = maildir\n\
             begin transports\n\
             maildir:\n  driver = appendfile\n  directory = {d}/Maildir\n  maildir_format\n  \
             create_directory\n  user = {EXIM_USER}\n  group = {EXIM_USER}\n  mode = 0644\n  \
             delivery_date_add = false\n  envelope_to_add = false\n  return_path_add = false\n\
             {auth}",
            exim = exim.display(),
        );
        let conf_path = dir.join("exim.conf");
        fs::write(&conf_path, conf).expect("write exim.conf");
        let mut cmd = Command::new(&exim);
        cmd.arg("-C")
            .arg(&conf_path)
            .args(["-bdf", "-oP"])
            .arg(dir.join("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        enter_with_binds(
            &mut cmd,
            &ns.path(),
            &[
                (&passwd, Path::new("/etc/passwd")),
                (&group, Path::new("/etc/group")),
                (&prefix, &mounted),
            ],
        );
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exim.display()));
        let exim = Exim { child, dir };
        exim.wait_log("daemon started", Duration::from_secs(10));
        exim.assert_private(&prefix);
        exim
    }

    /// The running daemon's binary is the private copy's file, not an installed MTA.
    fn assert_private(&self, prefix: &Path) {
        let exe = format!("/proc/{}/exe", self.child.id());
        let running = fs::metadata(&exe)
            .unwrap_or_else(|e| panic!("cannot stat the Exim daemon's {exe}: {e}"));
        let private = prefix.join(exim_prefix::BINARY);
        let ours = fs::metadata(&private)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", private.display()));
        assert!(
            (running.dev(), running.ino()) == (ours.dev(), ours.ino()),
            "the Exim daemon does not run the private copy {}",
            private.display()
        );
    }

    /// Exim's main log so far.
    pub fn mainlog(&self) -> String {
        fs::read_to_string(self.dir.join("log/mainlog")).unwrap_or_default()
    }

    /// Waits until the main log contains `what`; panics with the log after `max`.
    pub fn wait_log(&self, what: &str, max: Duration) {
        let deadline = Instant::now() + max;
        while !self.mainlog().contains(what) {
            assert!(
                Instant::now() < deadline,
                "exim: no {what:?} in its log:\n{}",
                self.mainlog()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the first delivered message and returns its file contents.
    pub fn delivered(&self) -> Vec<u8> {
        let new = self.dir.join("Maildir/new");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(f) = fs::read_dir(&new)
                .ok()
                .and_then(|rd| rd.filter_map(Result::ok).next())
            {
                return fs::read(f.path()).expect("read delivered message");
            }
            assert!(
                Instant::now() < deadline,
                "exim delivered nothing; log:\n{}",
                self.mainlog()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Exim's directory (log, spool, Maildir).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
