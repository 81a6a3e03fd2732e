//! A real MTA for the qmail-remote delivery test: Exim (Debian package exim4-daemon-light) run
//! in the foreground inside a netns with a private configuration, spool, log and Maildir, so
//! it never touches the system's mail setup. Delivered messages land in the Maildir.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::unique::unique_name;

/// The system account Debian's exim runs as.
const EXIM_USER: &str = "Debian-exim";

/// A running Exim daemon. Drop stops it and removes its directory.
pub struct Exim {
    child: Child,
    dir: PathBuf,
}

fn exim_ids() -> (u32, u32) {
    let out = Command::new("id").arg(EXIM_USER).output().expect("run id");
    let s = String::from_utf8_lossy(&out.stdout);
    let num = |key: &str| -> u32 {
        let i = s.find(key).unwrap_or_else(|| {
            panic!("no {EXIM_USER} account (apt-get install exim4-daemon-light): {s}")
        });
        s[i + key.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("id")
    };
    (num("uid="), num("gid="))
}

impl Exim {
    /// Starts Exim listening on `addr`:`port` inside `ns`, accepting mail for any recipient
    /// and delivering it to a Maildir.
    pub fn start(ns: &Netns, addr: &str, port: u16) -> Exim {
        let (uid, gid) = exim_ids();
        let dir = std::env::temp_dir().join(format!("{}-exim", unique_name()));
        for d in ["spool", "log", "Maildir"] {
            let p = dir.join(d);
            fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            chown(&p, Some(uid), Some(gid)).expect("chown");
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let d = dir.display();
        let conf = format!(
            "primary_hostname = mx.example.test\n\
             qualify_domain = example.test\n\
             spool_directory = {d}/spool\n\
             log_file_path = {d}/log/%slog\n\
             exim_user = {EXIM_USER}\n\
             exim_group = {EXIM_USER}\n\
             never_users = root\n\
             local_interfaces = <; {addr}.{port}\n\
             daemon_smtp_ports = {port}\n\
             acl_smtp_rcpt = acl_rcpt\n\
             host_lookup =\n\
             rfc1413_hosts =\n\
             keep_environment =\n\
             tls_advertise_hosts =\n\
             received_header_text = Received: by exim test\n\
             begin acl\n\
             acl_rcpt:\n  accept\n\
             begin routers\n\
             all:\n  driver = accept\n  transport = maildir\n\
             begin transports\n\
             maildir:\n  driver = appendfile\n  directory = {d}/Maildir\n  maildir_format\n  \
             create_directory\n  user = {EXIM_USER}\n  group = {EXIM_USER}\n  mode = 0644\n  \
             delivery_date_add = false\n  envelope_to_add = false\n  return_path_add = false\n"
        );
        let conf_path = dir.join("exim.conf");
        fs::write(&conf_path, conf).expect("write exim.conf");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "exim4", "-C"])
            .arg(&conf_path)
            .args(["-bdf", "-oP"])
            .arg(dir.join("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start exim4 (apt-get install exim4-daemon-light): {e}")
            });
        let exim = Exim { child, dir };
        exim.wait_log("daemon started", Duration::from_secs(10));
        exim
    }

    fn mainlog(&self) -> String {
        fs::read_to_string(self.dir.join("log/mainlog")).unwrap_or_default()
    }

    fn wait_log(&self, what: &str, max: Duration) {
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
