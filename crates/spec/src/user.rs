//! The container user: uid, gid and supplementary groups.
//!
//! The caller reads `/etc/passwd` and `/etc/group` from the image rootfs and
//! hands their text here; resolution itself is pure.

use crate::error::{invalid, SpecError};

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// One line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// Parses /etc/passwd text, skipping malformed lines.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .collect()
}

/// Parses /etc/group text, skipping malformed lines.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// How supplementary groups are formed (CRI SupplementalGroupsPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SupplementalGroupsPolicy {
    /// The request's groups plus the image's /etc/group memberships.
    #[default]
    Merge,
    /// Only the request's groups.
    Strict,
}

/// What the request and the image say about the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRequest {
    /// `security_context.run_as_user`.
    pub run_as_user: Option<i64>,
    /// `security_context.run_as_username`.
    pub run_as_username: String,
    /// `security_context.run_as_group`.
    pub run_as_group: Option<i64>,
    /// `security_context.supplemental_groups`.
    pub supplemental_groups: Vec<i64>,
    /// `security_context.supplemental_groups_policy`.
    pub policy: SupplementalGroupsPolicy,
    /// The image config's `User` (`name`, `uid`, `uid:gid`, `name:group`).
    pub image_user: String,
}

/// The resolved identity of the container process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups, in order, without duplicates.
    pub additional_gids: Vec<u32>,
    /// The login name, when known.
    pub username: Option<String>,
}

const SC: &str = "config.linux.security_context";

fn to_id(v: i64, field: &str) -> Result<u32, SpecError> {
    u32::try_from(v).map_err(|_| invalid(field, format!("{v} is not a valid id")))
}

/// Resolves the user as containerd does: `run_as_user`, else
/// `run_as_username`, else the image's `User`; `run_as_group` overrides the
/// group; supplementary groups from the request and (with the Merge policy)
/// from the image's /etc/group.
pub fn resolve(
    req: &UserRequest,
    passwd: &[PasswdEntry],
    group: &[GroupEntry],
) -> Result<ResolvedUser, SpecError> {
    if req.run_as_group.is_some() && req.run_as_user.is_none() && req.run_as_username.is_empty() {
        // As containerd and CRI-O: a group alone would run the image's
        // user with a group nobody asked it to have.
        return Err(invalid(
            format!("{SC}.run_as_group"),
            "run_as_group is set without run_as_user or run_as_username",
        ));
    }
    let by_uid = |uid: u32| passwd.iter().find(|p| p.uid == uid);
    let by_name = |name: &str| passwd.iter().find(|p| p.name == name);

    let (uid, mut gid, username) = if let Some(u) = req.run_as_user {
        let uid = to_id(u, &format!("{SC}.run_as_user"))?;
        let entry = by_uid(uid);
        (
            uid,
            entry.map(|e| e.gid).unwrap_or(0),
            entry.map(|e| e.name.clone()),
        )
    } else if !req.run_as_username.is_empty() {
        let e = by_name(&req.run_as_username).ok_or_else(|| {
            invalid(
                format!("{SC}.run_as_username"),
                format!(
                    "user {:?} does not exist in the image's /etc/passwd",
                    req.run_as_username
                ),
            )
        })?;
        (e.uid, e.gid, Some(e.name.clone()))
    } else {
        resolve_image_user(&req.image_user, passwd, group)?
    };
    if let Some(g) = req.run_as_group {
        gid = to_id(g, &format!("{SC}.run_as_group"))?;
    }

    // In order, without duplicates: a set beside the list (an image's
    // /etc/group may make a user a member of very many groups).
    let mut additional: Vec<u32> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |g: u32| {
        if seen.insert(g) {
            additional.push(g);
        }
    };
    push(gid);
    if req.policy == SupplementalGroupsPolicy::Merge {
        if let Some(name) = &username {
            for g in group.iter().filter(|g| g.members.iter().any(|m| m == name)) {
                push(g.gid);
            }
        }
    }
    for g in &req.supplemental_groups {
        push(to_id(*g, &format!("{SC}.supplemental_groups"))?);
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        username,
    })
}

fn resolve_image_user(
    spec: &str,
    passwd: &[PasswdEntry],
    group: &[GroupEntry],
) -> Result<(u32, u32, Option<String>), SpecError> {
    const FIELD: &str = "image.config.User";
    if spec.is_empty() {
        let root = passwd.iter().find(|p| p.uid == 0);
        return Ok((0, 0, root.map(|e| e.name.clone()).or(Some("root".into()))));
    }
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid, username) = match user.parse::<u32>() {
        Ok(uid) => {
            let e = passwd.iter().find(|p| p.uid == uid);
            (
                uid,
                e.map(|e| e.gid).unwrap_or(0),
                e.map(|e| e.name.clone()),
            )
        }
        Err(_) => {
            let e = passwd.iter().find(|p| p.name == user).ok_or_else(|| {
                invalid(
                    FIELD,
                    format!("user {user:?} does not exist in the image's /etc/passwd"),
                )
            })?;
            (e.uid, e.gid, Some(e.name.clone()))
        }
    };
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                group
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| {
                        invalid(
                            FIELD,
                            format!("group {g:?} does not exist in the image's /etc/group"),
                        )
                    })?
                    .gid
            }
        };
    }
    Ok((uid, gid, username))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken\nnobody:x:65534:65534::/:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:app,other\nvideo:x:44:app\nnogroup:x:65534:\napp:x:1000:\n";

    #[test]
    fn parsing() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[2],
            PasswdEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1000
            }
        );
        let g = parse_group(GROUP);
        assert_eq!(g[1].members, vec!["app".to_string(), "other".into()]);
    }

    #[test]
    fn huge_group_file_resolves_fast() {
        // A million groups, the user a member of every one (and each gid
        // twice, to exercise the de-duplication).
        let mut text = String::with_capacity(24 * 1_000_000);
        for i in 0..1_000_000u32 {
            text.push_str(&format!("g{i}:x:{}:app,other\n", 2000 + i / 2));
        }
        let started = std::time::Instant::now();
        let g = parse_group(&text);
        assert_eq!(g.len(), 1_000_000);
        let r = resolve(
            &UserRequest {
                image_user: "app".into(),
                supplemental_groups: vec![7, 2000, 7],
                ..UserRequest::default()
            },
            &parse_passwd(PASSWD),
            &g,
        )
        .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(r.additional_gids.len(), 1 + 500_000 + 1);
        assert_eq!(&r.additional_gids[..3], &[1000, 2000, 2001]);
        assert_eq!(r.additional_gids.last(), Some(&7));
        // Quadratic de-duplication takes minutes here; linear well under a second
        // (generous bound for debug builds on a loaded machine).
        assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
    }

    #[test]
    fn resolution_table() {
        let p = parse_passwd(PASSWD);
        let g = parse_group(GROUP);
        let base = UserRequest::default();
        // (request, want uid, gid, additional) or Err(field)
        let cases: Vec<(UserRequest, Result<(u32, u32, Vec<u32>), &str>)> = vec![
            (base.clone(), Ok((0, 0, vec![0]))),
            (
                UserRequest {
                    image_user: "app".into(),
                    ..base.clone()
                },
                Ok((1000, 1000, vec![1000, 10, 44])),
            ),
            (
                UserRequest {
                    image_user: "1000".into(),
                    ..base.clone()
                },
                Ok((1000, 1000, vec![1000, 10, 44])),
            ),
            (
                UserRequest {
                    image_user: "1000:44".into(),
                    ..base.clone()
                },
                Ok((1000, 44, vec![44, 10])),
            ),
            (
                UserRequest {
                    image_user: "app:wheel".into(),
                    ..base.clone()
                },
                Ok((1000, 10, vec![10, 44])),
            ),
            (
                UserRequest {
                    image_user: "4242".into(),
                    ..base.clone()
                },
                Ok((4242, 0, vec![0])),
            ),
            (
                UserRequest {
                    image_user: "ghost".into(),
                    ..base.clone()
                },
                Err("image.config.User"),
            ),
            (
                UserRequest {
                    image_user: "app:ghosts".into(),
                    ..base.clone()
                },
                Err("image.config.User"),
            ),
            (
                UserRequest {
                    run_as_user: Some(65534),
                    image_user: "app".into(),
                    ..base.clone()
                },
                Ok((65534, 65534, vec![65534])),
            ),
            (
                UserRequest {
                    run_as_user: Some(1000),
                    run_as_group: Some(5),
                    ..base.clone()
                },
                Ok((1000, 5, vec![5, 10, 44])),
            ),
            (
                UserRequest {
                    run_as_username: "app".into(),
                    ..base.clone()
                },
                Ok((1000, 1000, vec![1000, 10, 44])),
            ),
            (
                UserRequest {
                    run_as_username: "app".into(),
                    run_as_group: Some(5),
                    ..base.clone()
                },
                Ok((1000, 5, vec![5, 10, 44])),
            ),
            (
                UserRequest {
                    run_as_group: Some(5),
                    image_user: "app".into(),
                    ..base.clone()
                },
                Err("run_as_group: run_as_group is set without run_as_user"),
            ),
            (
                UserRequest {
                    run_as_username: "ghost".into(),
                    ..base.clone()
                },
                Err("run_as_username"),
            ),
            (
                UserRequest {
                    run_as_user: Some(-1),
                    ..base.clone()
                },
                Err("run_as_user"),
            ),
            (
                UserRequest {
                    run_as_user: Some(1000),
                    supplemental_groups: vec![7, 10],
                    ..base.clone()
                },
                Ok((1000, 1000, vec![1000, 10, 44, 7])),
            ),
            (
                UserRequest {
                    run_as_user: Some(1000),
                    supplemental_groups: vec![7],
                    policy: SupplementalGroupsPolicy::Strict,
                    ..base.clone()
                },
                Ok((1000, 1000, vec![1000, 7])),
            ),
        ];
        for (req, want) in cases {
            let got = resolve(&req, &p, &g);
            match want {
                Ok((uid, gid, add)) => {
                    let r = got.unwrap_or_else(|e| panic!("{req:?}: {e}"));
                    assert_eq!(
                        (r.uid, r.gid, r.additional_gids),
                        (uid, gid, add),
                        "{req:?}"
                    );
                }
                Err(field) => {
                    let e = got.expect_err(&format!("{req:?}")).to_string();
                    assert!(e.contains(field), "{req:?}: {e}");
                }
            }
        }
    }
}
