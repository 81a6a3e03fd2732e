//! The qmail home directory, resolved the same way by every program: an explicit directory
//! (`--qmail-home`), then `$QMAILHOME`, then the build-time default (`QMAILHOME_DEFAULT`, like
//! stock qmail's conf-qmail), then `/var/qmail`. One place, so qmail-remote and the guard never
//! read different `control/moreipme` files.

use std::ffi::OsString;
use std::path::PathBuf;

/// The home when neither a flag nor `$QMAILHOME` names one.
pub const DEFAULT_HOME: &str = match option_env!("QMAILHOME_DEFAULT") {
    Some(h) => h,
    None => "/var/qmail",
};

/// `explicit`, else `$QMAILHOME` (when set and non-empty), else [`DEFAULT_HOME`].
#[inline]
pub fn qmail_home(explicit: Option<PathBuf>) -> PathBuf {
    resolve(explicit, std::env::var_os("QMAILHOME"))
}

#[inline]
fn resolve(explicit: Option<PathBuf>, env: Option<OsString>) -> PathBuf {
    explicit
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HOME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_flag_env_default() {
        let flag = Some(PathBuf::from("/flag"));
        let env = Some(OsString::from("/env"));
        assert_eq!(resolve(flag.clone(), env.clone()), PathBuf::from("/flag"));
        assert_eq!(resolve(None, env), PathBuf::from("/env"));
        assert_eq!(
            resolve(None, Some(OsString::new())),
            PathBuf::from(DEFAULT_HOME)
        );
        assert_eq!(
            resolve(Some(PathBuf::new()), None),
            PathBuf::from(DEFAULT_HOME)
        );
        assert_eq!(resolve(None, None), PathBuf::from(DEFAULT_HOME));
    }
}
