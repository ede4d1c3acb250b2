//! Which plugin set what, across the plugins answering one CreateContainer:
//! NRI's conflict rule.
//!
//! A plugin *claims* a field (a simple one such as the memory limit, or an
//! entry of a compound one such as the environment variable `FOO`) by
//! setting it. A second plugin claiming a field the first one claimed is a
//! conflict, and so is claiming one that another plugin removed. A plugin
//! removing a claimed entry takes its ownership over as "removed by": it may
//! set the entry again itself, nobody else may. Hooks and cgroup device rules
//! are additive and never conflict.

use std::collections::HashMap;

use super::AdjustError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Set(String),
    Removed(String),
}

/// The owners of the fields adjusted so far for one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    fields: HashMap<String, Owner>,
}

impl Owners {
    /// `plugin` sets `field`: refused when another plugin set or removed it.
    pub fn claim(&mut self, field: &str, plugin: &str) -> Result<(), AdjustError> {
        match self.fields.get(field) {
            Some(Owner::Set(other) | Owner::Removed(other)) if other != plugin => {
                Err(AdjustError::Conflict {
                    field: field.to_string(),
                    plugin: plugin.to_string(),
                    other: other.clone(),
                })
            }
            _ => {
                self.fields
                    .insert(field.to_string(), Owner::Set(plugin.to_string()));
                Ok(())
            }
        }
    }

    /// `plugin` removes `field`: if a plugin had set it, it is now
    /// `plugin`'s removal (only `plugin` may set it again). Removing what no
    /// plugin set (the container's own entry) claims nothing.
    pub fn clear(&mut self, field: &str, plugin: &str) {
        if let Some(owner) = self.fields.get_mut(field) {
            *owner = Owner::Removed(plugin.to_string());
        }
    }

    /// Each field a plugin set (and did not remove since), with that
    /// plugin, in no particular order. A field is named as in conflict
    /// errors: `env "FOO"`, `linux.resources.memory.limit`, ...
    pub fn owned(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().filter_map(|(field, owner)| match owner {
            Owner::Set(p) => Some((field.as_str(), p.as_str())),
            Owner::Removed(_) => None,
        })
    }

    /// The plugin that set `field`, if one did (and did not remove it).
    pub fn owner(&self, field: &str) -> Option<&str> {
        match self.fields.get(field) {
            Some(Owner::Set(p)) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (operations as (plugin, field, set?), the error expected of the last)
    #[test]
    fn claims_and_conflicts() {
        let cases: &[(&[(&str, &str, bool)], Option<(&str, &str)>)] = &[
            // one plugin, any number of times
            (&[("a", "env \"X\"", true), ("a", "env \"X\"", true)], None),
            // two plugins, the same field
            (
                &[("a", "env \"X\"", true), ("b", "env \"X\"", true)],
                Some(("b", "a")),
            ),
            // two plugins, different fields
            (&[("a", "env \"X\"", true), ("b", "env \"Y\"", true)], None),
            // removal of another's entry is allowed ...
            (&[("a", "env \"X\"", true), ("b", "env \"X\"", false)], None),
            // ... and then the remover owns it: it may set it ...
            (
                &[
                    ("a", "env \"X\"", true),
                    ("b", "env \"X\"", false),
                    ("b", "env \"X\"", true),
                ],
                None,
            ),
            // ... nobody else may (not even the first)
            (
                &[
                    ("a", "env \"X\"", true),
                    ("b", "env \"X\"", false),
                    ("a", "env \"X\"", true),
                ],
                Some(("a", "b")),
            ),
            (
                &[
                    ("a", "memory limit", true),
                    ("b", "memory limit", false),
                    ("c", "memory limit", true),
                ],
                Some(("c", "b")),
            ),
            // removing what no plugin set claims nothing
            (&[("a", "env \"X\"", false), ("b", "env \"X\"", true)], None),
        ];
        for (ops, want) in cases {
            let mut o = Owners::default();
            let mut last = Ok(());
            for (plugin, field, set) in ops.iter() {
                if *set {
                    last = o.claim(field, plugin);
                } else {
                    o.clear(field, plugin);
                    last = Ok(());
                }
            }
            match want {
                None => assert_eq!(last, Ok(()), "{ops:?}"),
                Some((plugin, other)) => {
                    let field = ops.last().unwrap().1;
                    assert_eq!(
                        last,
                        Err(AdjustError::Conflict {
                            field: field.into(),
                            plugin: plugin.to_string(),
                            other: other.to_string()
                        }),
                        "{ops:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn owner_is_the_setter() {
        let mut o = Owners::default();
        assert_eq!(o.owner("x"), None);
        o.claim("x", "p").unwrap();
        assert_eq!(o.owner("x"), Some("p"));
        o.claim("y", "q").unwrap();
        let mut owned: Vec<_> = o.owned().collect();
        owned.sort();
        assert_eq!(owned, [("x", "p"), ("y", "q")]);
        o.clear("x", "q");
        assert_eq!(o.owner("x"), None);
        assert_eq!(o.owned().collect::<Vec<_>>(), [("y", "q")]);
    }
}
