//! Test certificates made with the openssl command line tool: a CA, and the server and client
//! certificates it issues with chosen subjectAltNames and commonName. Files are world-readable (Exim reads
//! them as its own user) and removed on drop.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::unique::unique_name;

/// A directory of keys and certificates.
pub struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// An empty directory.
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!("{}-pki", unique_name()));
        fs::create_dir_all(&dir).expect("mkdir pki");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod pki");
        Pki { dir }
    }

    /// The file `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A self-signed CA `NAME.pem` / `NAME.key` (EC P-256).
    pub fn ca(&self, name: &str) -> PathBuf {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "30",
                "-subj",
                &format!("/CN={name} test CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        self.readable();
        self.path(&format!("{name}.pem"))
    }

    /// A server certificate `NAME.pem` / `NAME.key` issued by `ca` for the DNS names `sans`
    /// (none: no subjectAltName at all) with commonName `cn`. Returns (certificate, key).
    pub fn server(&self, name: &str, ca: &str, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        self.issue(name, ca, cn, sans, "serverAuth")
    }

    /// A client certificate `NAME.pem` / `NAME.key` issued by `ca` with commonName `cn`, and
    /// `NAME.both.pem`: the certificate followed by its key, as control/clientcert.pem wants.
    /// Returns the combined file.
    pub fn client(&self, name: &str, ca: &str, cn: &str) -> PathBuf {
        let (cert, key) = self.issue(name, ca, cn, &[], "clientAuth");
        let mut both = fs::read(cert).expect("read client certificate");
        both.extend(fs::read(key).expect("read client key"));
        let path = self.path(&format!("{name}.both.pem"));
        fs::write(&path, both).expect("write client certificate and key");
        path
    }

    /// A leaf certificate for the extended key usage `eku`, see [`Pki::server`].
    fn issue(
        &self,
        name: &str,
        ca: &str,
        cn: &str,
        sans: &[&str],
        eku: &str,
    ) -> (PathBuf, PathBuf) {
        let mut ext = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={eku}\n",
        );
        if !sans.is_empty() {
            let list: Vec<String> = sans.iter().map(|s| format!("DNS:{s}")).collect();
            ext.push_str(&format!("subjectAltName={}\n", list.join(",")));
        }
        fs::write(self.path(&format!("{name}.ext")), ext).expect("write ext");
        let subj = if cn.is_empty() {
            "/O=no common name".to_string()
        } else {
            format!("/CN={cn}")
        };
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &subj,
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "30",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
        self.readable();
        (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        )
    }

    fn readable(&self) {
        for e in fs::read_dir(&self.dir).expect("read pki dir").flatten() {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o644));
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
