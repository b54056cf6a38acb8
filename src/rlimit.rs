//! The open-file limit (RLIMIT_NOFILE).
//!
//! Every HTTP connection, provider connection and database file takes a descriptor. Many
//! distributions still start services with a soft limit of 1,024 while allowing far more, so a
//! few hundred slow clients could starve deliveries of descriptors. Raising the soft limit to the
//! hard limit is what the hard limit is for, and needs no privilege.

use std::io;

/// The open-file limit: soft (in force) and hard (the most the soft limit may be raised to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

/// The limit in force.
pub fn nofile() -> io::Result<NoFile> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call; getrlimit only
    // writes into it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // rlim_t is u64 here but narrower on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    Ok(NoFile {
        soft: lim.rlim_cur as u64,
        hard: lim.rlim_max as u64,
    })
}

/// Raises the soft limit to the hard limit; returns the limits before and after.
pub fn raise_nofile() -> io::Result<(NoFile, NoFile)> {
    let before = nofile()?;
    if before.soft < before.hard {
        let lim = libc::rlimit {
            rlim_cur: before.hard as libc::rlim_t,
            rlim_max: before.hard as libc::rlim_t,
        };
        // SAFETY: `lim` is a valid rlimit that outlives the call; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, nofile()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_brings_the_soft_limit_to_the_hard_limit() {
        let (before, after) = raise_nofile().unwrap();
        assert_eq!(after.soft, after.hard);
        assert_eq!(after.hard, before.hard);
        assert!(after.soft >= before.soft);
    }
}
