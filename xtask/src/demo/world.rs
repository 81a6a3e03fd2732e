//! The demo's scene: the NAT topology, dnsmasq, Exim as the mail host's SMTP server, the qmail
//! cgroup, a qmail home and the guard. Fields drop in declaration order: processes first,
//! then the guard's pins, the files, the cgroup and last the namespaces.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use guard_tests::Cgroup;
use guard_tests::dnsmasq::Dnsmasq;
use guard_tests::mta::Exim;
use guard_tests::qmail_remote::QmailHome;

use super::say;
use crate::kit::build::Bins;
use crate::kit::daemon::Daemon;
use crate::kit::guard::Guard;
use crate::kit::harness::attempt;
use crate::kit::nat::{self, NatScene};
use crate::kit::netns::in_netns;
use crate::kit::remote::{MessageFile, QMAILR, Remote};
use crate::kit::spawn::Placement;
use crate::kit::{interrupt, names};

pub const SENDER: &str = "sender@example.org";
pub const RECIP: &str = "user@loop.test";

/// The message queued for delivery.
const MESSAGE: &str = "From: sender@example.org\n\
To: user@loop.test\n\
Subject: qmail-guard demo\n\
\n\
loop.test's MX is this very host, behind its router's port forward.\n";

pub struct World {
    pub daemon: Option<Daemon>,
    pub guard: Guard,
    pub exim: Exim,
    /// Kept for its Drop (stops dnsmasq, removes /etc/netns/NAME).
    pub _dns: Dnsmasq,
    pub message: MessageFile,
    pub home: QmailHome,
    pub cgroup: Cgroup,
    pub scene: NatScene,
    pub qmail_remote: PathBuf,
}

impl World {
    pub fn new(bins: &Bins) -> Result<World> {
        say::heading("The scene");
        let qmail_remote = bins.path("qmail-remote")?;
        let qmail_guard = bins.path("qmail-guard")?;
        let scene = NatScene::new()?;
        interrupt::check()?;
        let cgroup = attempt("creating the qmail cgroup", || {
            Cgroup::new(&names::name("qmail"))
        })?;
        let home = attempt("creating the qmail home", QmailHome::new)?;
        attempt("writing control/me", || {
            home.write_control("me", "mail.example.org\n")
        })?;
        let message =
            MessageFile::new(&format!("{}.msg", names::name("demo")), MESSAGE.as_bytes())?;
        let dns = scene.dns()?;
        interrupt::check()?;
        let exim = attempt("starting Exim", || {
            Exim::start(&scene.mail, nat::MAIL_V4, nat::SMTP)
        })?;
        // Exim can take most of a second before its first greeting: wait for it here, so
        // the steps below show the steady state.
        let greeting = exim_greeting(&scene)?;
        let guard = Guard::new(qmail_guard, &scene.mail.path(), home.path(), "demo")?;
        let w = World {
            daemon: None,
            guard,
            exim,
            _dns: dns,
            message,
            home,
            cgroup,
            scene,
            qmail_remote,
        };
        w.describe();
        say::line(&format!("Exim is up: {greeting}"));
        say::line(
            "(Times below are of debug builds; `cargo xtask bench` measures release builds.)",
        );
        Ok(w)
    }

    fn describe(&self) {
        let s = &self.scene;
        say::line(&format!(
            "netns {} — the mail host: eth0 {}/24, default route via the router;",
            s.mail.name(),
            nat::MAIL_V4
        ));
        say::line(&format!(
            "    Exim (Debian's, unpacked privately, not installed) listens on {}:25 and accepts mail for {}; a real qmail there would relay it on;",
            nat::MAIL_V4,
            nat::DOMAIN
        ));
        say::line(&format!(
            "    dnsmasq on 127.0.0.1:53 answers MX {} → {} = {} (its public address).",
            nat::DOMAIN,
            nat::MX_HOST,
            nat::PUBLIC
        ));
        say::line(&format!(
            "netns {} — the router: up0 {}/24, port forward {}:25 → {}:25 with hairpin NAT:",
            s.router.name(),
            nat::ROUTER_V4,
            nat::PUBLIC,
            nat::MAIL_V4
        ));
        say::out(&nat::ruleset());
        say::line(&format!(
            "cgroup {} — qmail's cgroup (the service qmail-send, qmail-rspawn and qmail-remote run in).",
            self.cgroup.path().display()
        ));
        say::line(&format!(
            "qmail home {}: control/me, no control/moreipme yet.",
            self.home.path().display()
        ));
        say::line(&format!(
            "No interface holds {}, so qmail's own check (ipme: the interfaces' addresses) cannot know that it is this host.",
            nat::PUBLIC
        ));
    }

    /// qmail-remote for loop.test as qmail-rspawn would run it: in the qmail cgroup, in the
    /// mail host's namespace with its resolver, as qmailr.
    pub fn remote(&self) -> Remote<'_> {
        Remote {
            bin: &self.qmail_remote,
            home: self.home.path(),
            host: nat::DOMAIN,
            sender: SENDER,
            recips: &[RECIP],
            message: self.message.path(),
            placement: Placement {
                cgroup: Some(self.cgroup.path().to_path_buf()),
                netns: Some(self.scene.mail.path()),
                resolv: Some(self.scene.resolv_conf()),
                user: Some(QMAILR),
                traceme: false,
                cpu: None,
            },
        }
    }

    /// Exim's arrival lines (`<=`) so far.
    pub fn exim_arrivals(&self) -> Vec<String> {
        std::fs::read_to_string(self.exim.dir().join("log/mainlog"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" <= "))
            .map(str::to_string)
            .collect()
    }
}

/// Connects to Exim from inside the mail host (directly, not through the NAT) and returns its
/// greeting line.
fn exim_greeting(scene: &NatScene) -> Result<String> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let addr = std::net::SocketAddr::new(nat::MAIL_V4.parse()?, nat::SMTP);
    in_netns(&scene.mail.path(), move || {
        let timeout = std::time::Duration::from_secs(10);
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("Exim does not answer on {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        let mut line = String::new();
        BufReader::new(&s)
            .read_line(&mut line)
            .context("no greeting from Exim")?;
        let _ = s.write_all(b"QUIT\r\n");
        Ok(line.trim().to_string())
    })
}
