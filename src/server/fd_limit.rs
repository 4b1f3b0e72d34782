//! The file-descriptor limit: raised to its hard limit at start, and the cap
//! on open connections kept well under it, so that `accept` does not run out
//! of descriptors (the store, the provider's connections and the logs need
//! some too).

/// Descriptors kept for everything but client connections: the store's
/// files, the provider pool (at most a few dozen), stdio, the listener.
const RESERVED: u64 = 256;

/// Raises the soft limit on open files to the hard limit; returns the soft
/// limit in force afterwards, or `None` where it cannot be read.
pub fn raise_to_hard() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!(
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                "cannot raise the open-file limit"
            );
        }
    }
    Some(limit.rlim_cur)
}

/// The connection cap: `configured`, unless the descriptor limit leaves less
/// room after [`RESERVED`] (or, under a tiny limit, half of it).
pub fn connection_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else {
        return configured;
    };
    let room = if limit > 2 * RESERVED {
        limit - RESERVED
    } else {
        limit / 2
    };
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    configured.min(room).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_under_the_descriptor_limit() {
        assert_eq!(connection_cap(4096, Some(1_048_576)), 4096);
        assert_eq!(connection_cap(4096, Some(4096)), 4096 - 256);
        assert_eq!(connection_cap(4096, Some(64)), 32);
        assert_eq!(connection_cap(4096, Some(1)), 1);
        assert_eq!(connection_cap(100, None), 100);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let soft = raise_to_hard().expect("readable on this platform");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!((soft, limit.rlim_cur), (limit.rlim_max, limit.rlim_max));
    }
}
