//! Keeping the long-lived shim's resident set small.
//!
//! Most of an idle shim's RSS are pages of its own executable and of libc
//! that the kernel mapped around the few it needed (fault-around), not pages
//! it uses. After start-up the shim asks the kernel to reclaim the clean file
//! pages of its read-only mappings (`MADV_PAGEOUT`, never losing data: dirty
//! or anonymous pages are left alone without swap) and to stop reading ahead
//! around later faults (`MADV_RANDOM`).

/// Limits glibc malloc to one arena: each thread would otherwise get its
/// own, and every arena keeps pages resident.
pub fn single_arena() {
    // SAFETY: mallopt only changes allocator tuning.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// One mapping of /proc/self/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Start address.
    pub start: usize,
    /// End address.
    pub end: usize,
    /// Permissions (`r-xp`).
    pub perms: String,
    /// Path (empty for anonymous mappings).
    pub path: String,
}

/// Parses /proc/self/maps.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next()?;
            let perms = it.next()?.to_string();
            let _off = it.next()?;
            let _dev = it.next()?;
            let _ino = it.next()?;
            let path = it.collect::<Vec<_>>().join(" ");
            let (s, e) = range.split_once('-')?;
            Some(Mapping {
                start: usize::from_str_radix(s, 16).ok()?,
                end: usize::from_str_radix(e, 16).ok()?,
                perms,
                path,
            })
        })
        .collect()
}

/// Whether a mapping is a read-only file mapping worth trimming.
pub fn trimmable(m: &Mapping) -> bool {
    m.path.starts_with('/') && !m.perms.contains('w') && m.perms.starts_with('r')
}

/// Trims the resident file pages of the process (best effort).
pub fn trim() {
    let Ok(text) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for m in parse_maps(&text).iter().filter(|m| trimmable(m)) {
        let len = m.end - m.start;
        // SAFETY: advisory calls on mappings of this process; MADV_RANDOM
        // and MADV_PAGEOUT never change the mapping's contents.
        unsafe {
            libc::madvise(m.start as *mut libc::c_void, len, libc::MADV_RANDOM);
            libc::madvise(m.start as *mut libc::c_void, len, libc::MADV_PAGEOUT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_table() {
        let text = "55d2d9a33000-55d2d9b8f000 r--p 00000000 fe:00 123 /usr/bin/shim\n\
                    55d2d9b8f000-55d2d9e21000 r-xp 0015c000 fe:00 123 /usr/bin/shim\n\
                    55d2d9e53000-55d2d9e57000 rw-p 00420000 fe:00 123 /usr/bin/shim\n\
                    55d2e6bb3000-55d2e6bd4000 rw-p 00000000 00:00 0 [heap]\n\
                    7f0000000000-7f0000001000 r--p 00000000 00:00 0\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].start, 0x55d2d9b8f000);
        assert_eq!(m[1].perms, "r-xp");
        let t: Vec<bool> = m.iter().map(trimmable).collect();
        assert_eq!(t, [true, true, false, false, false]);
    }

    #[test]
    fn trim_keeps_the_process_working() {
        trim();
        // Code and data still work after the advice.
        let v: Vec<u32> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u32>(), 499500);
    }
}
