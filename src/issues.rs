//! A typed collector of validation problems: every component's `validate` fills one, each problem with the key
//! path it belongs to (`sources[2].window_secs`) and a message that says what would be right.
//!
//! Components below `config` know their own keys only; the configuration loader gives each one a scope (its
//! section's path) and turns the result into `config::ConfigIssue`s with line numbers.

/// One problem: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Key path from the root of the file, e.g. `mqtt.tls.ca_file` (empty: the whole file).
    pub path: String,
    /// What is wrong and what would be right.
    pub message: String,
}

/// Problems collected so far, in the order found.
#[derive(Debug, Default, Clone)]
pub struct Issues {
    items: Vec<Issue>,
}

impl Issues {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.items.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }

    /// A view that prefixes every key with `prefix` (`sources[2]` + `name` → `sources[2].name`).
    pub fn scope<'a>(&'a mut self, prefix: &str) -> Scope<'a> {
        Scope {
            issues: self,
            prefix: prefix.to_owned(),
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The problems.
    pub fn iter(&self) -> impl Iterator<Item = &Issue> {
        self.items.iter()
    }

    /// The problems, by value.
    pub fn into_vec(self) -> Vec<Issue> {
        self.items
    }
}

/// Problems of one section or list entry: keys are relative to its prefix.
#[derive(Debug)]
pub struct Scope<'a> {
    issues: &'a mut Issues,
    prefix: String,
}

impl Scope<'_> {
    /// Records a problem at `prefix.key` (`key` may be empty: the prefix itself).
    pub fn push(&mut self, key: &str, message: impl Into<String>) {
        let path = match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{key}", self.prefix),
        };
        self.issues.push(path, message);
    }

    /// A narrower scope (`sources[2]` → `sources[2].paths[0]`).
    pub fn scope(&mut self, key: &str) -> Scope<'_> {
        let prefix = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        };
        Scope {
            issues: self.issues,
            prefix,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_prefix_their_keys() {
        let mut issues = Issues::new();
        issues.push("device.id", "bad");
        {
            let mut s = issues.scope("sources[2]");
            s.push("name", "taken");
            s.push("", "whole entry");
            s.scope("paths[0]").push("", "missing");
        }
        issues.scope("").push("prompts", "top level");
        let paths: Vec<String> = issues.iter().map(|i| i.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "device.id",
                "sources[2].name",
                "sources[2]",
                "sources[2].paths[0]",
                "prompts"
            ]
        );
    }
}
