//! Where this machine's apt gets Debian from: the archive and security URIs (and keyring) of
//! the configured sources, so the kernel download uses the same hosts without touching the
//! system's apt setup. Both source formats are read: one-line `.list` and deb822 `.sources`.

use std::fs;
use std::path::Path;

const DEFAULT_ARCHIVE: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY: &str = "http://deb.debian.org/debian-security";
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One `deb` entry: a URI, its suites and its keyring.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    uri: String,
    suites: Vec<String>,
    signed_by: Option<String>,
}

/// The Debian archive and security archive this machine uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianHosts {
    pub archive: String,
    pub archive_keyring: String,
    pub security: String,
    pub security_keyring: String,
}

impl DebianHosts {
    /// Reads /etc/apt/sources.list and /etc/apt/sources.list.d; unreadable or foreign entries
    /// are ignored and the defaults (deb.debian.org) fill in what is not found.
    pub fn from_system() -> DebianHosts {
        let mut entries = Vec::new();
        if let Ok(s) = fs::read_to_string("/etc/apt/sources.list") {
            entries.extend(parse_one_line(&s));
        }
        let dir = Path::new("/etc/apt/sources.list.d");
        if let Ok(rd) = fs::read_dir(dir) {
            let mut paths: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                let Ok(s) = fs::read_to_string(&p) else {
                    continue;
                };
                match p.extension().and_then(|e| e.to_str()) {
                    Some("list") => entries.extend(parse_one_line(&s)),
                    Some("sources") => entries.extend(parse_deb822(&s)),
                    _ => {}
                }
            }
        }
        pick(&entries)
    }

    /// A one-line sources.list for `suite` and its security updates.
    pub fn sources_list(&self, suite: &str) -> String {
        format!(
            "deb [signed-by={}] {} {suite} main\ndeb [signed-by={}] {} {suite}-security main\n",
            self.archive_keyring, self.archive, self.security_keyring, self.security
        )
    }
}

fn pick(entries: &[Entry]) -> DebianHosts {
    let path_is = |e: &Entry, last: &str| e.uri.trim_end_matches('/').ends_with(last);
    let archive = entries
        .iter()
        .find(|e| path_is(e, "/debian") && e.suites.iter().any(|s| !s.contains('-')));
    let security = entries.iter().find(|e| {
        path_is(e, "/debian-security") || e.suites.iter().any(|s| s.ends_with("-security"))
    });
    let keyring = |e: Option<&Entry>| {
        e.and_then(|e| e.signed_by.clone())
            .unwrap_or_else(|| DEFAULT_KEYRING.to_string())
    };
    let uri = |e: Option<&Entry>, d: &str| {
        e.map(|e| e.uri.trim_end_matches('/').to_string())
            .unwrap_or_else(|| d.to_string())
    };
    DebianHosts {
        archive: uri(archive, DEFAULT_ARCHIVE),
        archive_keyring: keyring(archive),
        security: uri(security, DEFAULT_SECURITY),
        security_keyring: keyring(security),
    }
}

/// `deb [opt=v …] URI SUITE COMPONENT…`
fn parse_one_line(text: &str) -> Vec<Entry> {
    let mut v = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let (opts, rest) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((o, r)) => (o, r),
                None => continue,
            },
            None => ("", rest),
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        let signed_by = opts
            .split_whitespace()
            .find_map(|o| o.strip_prefix("signed-by="))
            .map(str::to_string);
        v.push(Entry {
            uri: uri.to_string(),
            suites: vec![suite.to_string()],
            signed_by,
        });
    }
    v
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Signed-By:`); an inline key block in
/// Signed-By is not a path and is ignored (the default keyring is used instead).
fn parse_deb822(text: &str) -> Vec<Entry> {
    let mut v = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut signed_by = None;
        for line in stanza.lines() {
            if line.starts_with('#') || line.starts_with(' ') || line.starts_with('\t') {
                continue;
            }
            let Some((k, val)) = line.split_once(':') else {
                continue;
            };
            let words = || val.split_whitespace().map(str::to_string);
            match k.trim().to_ascii_lowercase().as_str() {
                "types" => types = words().collect(),
                "uris" => uris = words().collect(),
                "suites" => suites = words().collect(),
                "signed-by" => {
                    signed_by = val.trim().starts_with('/').then(|| val.trim().to_string())
                }
                "enabled" if val.trim() == "no" => types.clear(),
                _ => {}
            }
        }
        if !types.iter().any(|t| t == "deb") {
            continue;
        }
        for uri in uris {
            v.push(Entry {
                uri,
                suites: suites.clone(),
                signed_by: signed_by.clone(),
            });
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_archive_and_security_are_found() {
        let text = "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /k/archive.gpg\n\n\
                    Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\
                    Components: main\nSigned-By: /k/security.gpg\n";
        let h = pick(&parse_deb822(text));
        assert_eq!(h.archive, "http://mirror.example/debian");
        assert_eq!(h.archive_keyring, "/k/archive.gpg");
        assert_eq!(h.security, "http://mirror.example/debian-security");
        assert_eq!(h.security_keyring, "/k/security.gpg");
        assert!(
            h.sources_list("bullseye")
                .contains("http://mirror.example/debian bullseye main")
        );
    }

    #[test]
    fn one_line_entries_and_defaults() {
        let text = "deb [arch=amd64 signed-by=/k/a.gpg] http://m.example/debian bookworm main\n\
                    deb-src http://m.example/debian bookworm main\n\
                    deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n";
        let h = pick(&parse_one_line(text));
        assert_eq!(h.archive, "http://m.example/debian");
        assert_eq!(h.archive_keyring, "/k/a.gpg");
        assert_eq!(h.security, DEFAULT_SECURITY);
        assert_eq!(h.security_keyring, DEFAULT_KEYRING);
    }

    #[test]
    fn disabled_stanzas_and_inline_keys_are_ignored() {
        let text = "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n\
                    Types: deb\nURIs: http://on.example/debian\nSuites: bookworm\n\
                    Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n";
        let h = pick(&parse_deb822(text));
        assert_eq!(h.archive, "http://on.example/debian");
        assert_eq!(h.archive_keyring, DEFAULT_KEYRING);
    }
}
