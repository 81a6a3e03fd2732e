//! Symbolic errno names, so probe output and failure messages say `ELOOP`, not `40`.

/// The symbolic name of the errno values a connect can plausibly produce.
pub fn name(errno: i32) -> &'static str {
    match errno {
        libc::ELOOP => "ELOOP",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EPIPE => "EPIPE",
        libc::EINVAL => "EINVAL",
        libc::ENOENT => "ENOENT",
        libc::EAGAIN => "EAGAIN",
        _ => "E?",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn eloop_is_named() {
        assert_eq!(super::name(libc::ELOOP), "ELOOP");
        assert_eq!(super::name(-1), "E?");
    }
}
