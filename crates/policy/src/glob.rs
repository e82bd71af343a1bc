//! Shell-style globs for selectors (`52:54:00:*`, `node-??`): `*` is any run of characters,
//! `?` one character, everything else itself, case-insensitively. Small on purpose: the
//! config check must decide whether two globs can match the same string (two groups that could
//! both claim one machine are a config error), and that is easy to decide exactly for this
//! language and hard for richer ones.

use std::collections::HashSet;

/// Longest glob accepted; selectors are MACs, hostnames and serials.
pub const MAX_GLOB_LEN: usize = 256;

/// A parsed glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
}

impl Glob {
    /// Parses `pattern`; `allowed` says which literal characters may appear (besides `*`, `?`).
    pub fn new(pattern: &str, allowed: impl Fn(char) -> bool) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("empty pattern".into());
        }
        if pattern.len() > MAX_GLOB_LEN {
            return Err(format!("pattern longer than {MAX_GLOB_LEN} characters"));
        }
        if let Some(c) = pattern
            .chars()
            .find(|&c| c != '*' && c != '?' && !allowed(c))
        {
            return Err(format!(
                "`{}` is not allowed in this pattern (only `*`, `?` and literal characters)",
                c.escape_default()
            ));
        }
        Ok(Glob {
            pattern: pattern.chars().map(|c| c.to_ascii_lowercase()).collect(),
        })
    }

    /// True if `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().map(|c| c.to_ascii_lowercase()).collect();
        // Iterative matcher with single-star backtracking: linear in practice, and bounded by
        // len(pattern) * len(text) in the worst case (both are short and length-capped).
        let (p, t) = (&self.pattern, &text);
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }

    /// True if some string matches both globs.
    pub fn intersects(&self, other: &Glob) -> bool {
        let (a, b) = (&self.pattern, &other.pattern);
        // Depth-first search over (position in a, position in b) with a visited set: at most
        // (len a + 1) * (len b + 1) states.
        let mut seen = HashSet::new();
        let mut stack = vec![(0usize, 0usize)];
        while let Some((i, j)) = stack.pop() {
            if !seen.insert((i, j)) {
                continue;
            }
            if i == a.len() && j == b.len() {
                return true;
            }
            if i < a.len() && a[i] == '*' {
                stack.push((i + 1, j));
                if j < b.len() {
                    stack.push((i, j + 1));
                }
            }
            if j < b.len() && b[j] == '*' {
                stack.push((i, j + 1));
                if i < a.len() {
                    stack.push((i + 1, j));
                }
            }
            if i < a.len() && j < b.len() && a[i] != '*' && b[j] != '*' {
                let compatible = a[i] == '?' || b[j] == '?' || a[i] == b[j];
                if compatible {
                    stack.push((i + 1, j + 1));
                }
            }
        }
        false
    }
}

impl std::fmt::Display for Glob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s: String = self.pattern.iter().collect();
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Glob {
        Glob::new(s, |c| c.is_ascii_graphic()).unwrap()
    }

    #[test]
    fn matching() {
        assert!(g("52:54:00:*").matches("52:54:00:12:34:56"));
        assert!(g("52:54:00:*").matches("52:54:00:"));
        assert!(!g("52:54:00:*").matches("52:54:01:12:34:56"));
        assert!(g("node-??").matches("NODE-12"));
        assert!(!g("node-??").matches("node-123"));
        assert!(g("*a*b*").matches("xxaxxbxx"));
        assert!(!g("*a*b*").matches("xxbxxaxx"));
        assert!(g("*").matches(""));
    }

    #[test]
    fn intersection() {
        assert!(g("52:54:00:*").intersects(&g("*:56")));
        assert!(g("52:54:00:*").intersects(&g("52:54:00:12:34:56")));
        assert!(!g("52:54:00:*").intersects(&g("52:54:01:*")));
        assert!(g("a?c").intersects(&g("?b?")));
        assert!(!g("a?c").intersects(&g("??d")));
        assert!(!g("ab").intersects(&g("abc")));
        assert!(g("*").intersects(&g("anything")));
        assert!(!g("x*").intersects(&g("*y*").and_not_empty_prefix()));
    }

    impl Glob {
        // A helper for the last case: "*y*" restricted to strings starting with "z".
        fn and_not_empty_prefix(&self) -> Glob {
            let mut p = vec!['z'];
            p.extend(self.pattern.iter());
            Glob { pattern: p }
        }
    }

    #[test]
    fn refuses_bad_patterns() {
        let hex = |c: char| c.is_ascii_hexdigit() || c == ':';
        assert!(Glob::new("52:54:00:*", hex).is_ok());
        assert!(Glob::new("52:54:zz:*", hex).is_err());
        assert!(Glob::new("", hex).is_err());
        assert!(Glob::new(&"a".repeat(MAX_GLOB_LEN + 1), hex).is_err());
    }
}
