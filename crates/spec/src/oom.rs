//! OOM score adjustment.
//!
//! Lowering a process's `oom_score_adj` below the daemon's own value needs
//! CAP_SYS_RESOURCE. Where the daemon lacks it (as on some VMs, and in user
//! namespaces), asking runc for a lower value makes container creation fail.
//! Like containerd's `restrict_oom_score_adj`, crius clamps a requested value
//! to no lower than its own.

/// The valid range of `oom_score_adj`.
pub const MIN_OOM_SCORE_ADJ: i32 = -1000;
/// The valid range of `oom_score_adj`.
pub const MAX_OOM_SCORE_ADJ: i32 = 1000;

/// Returns the value to put into the spec for a `requested` adjustment when
/// the daemon runs with `current` and may (`can_lower`) or may not lower it.
pub fn restrict_oom_score_adj(requested: i32, current: i32, can_lower: bool) -> i32 {
    let requested = requested.clamp(MIN_OOM_SCORE_ADJ, MAX_OOM_SCORE_ADJ);
    if can_lower {
        requested
    } else {
        requested.max(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        // (requested, current, can_lower, want)
        let cases = [
            (-998, 0, false, 0),
            (-998, 0, true, -998),
            (-998, -500, false, -500),
            (500, 0, false, 500),
            (-2000, -1000, true, -1000),
            (5000, 0, false, 1000),
            (0, 0, false, 0),
        ];
        for (requested, current, can_lower, want) in cases {
            assert_eq!(
                restrict_oom_score_adj(requested, current, can_lower),
                want,
                "requested={requested} current={current} can_lower={can_lower}"
            );
        }
    }
}
