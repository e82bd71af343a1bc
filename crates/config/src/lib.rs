//! Loading chainboot's TOML config so that every mistake is reported at once, with the file, the
//! line and the key, and a "did you mean" when a key or value is close to a known one.
//!
//! serde stops at the first error, which makes fixing a config a loop of run/fix/run. The loader
//! here keeps going: on each deserialisation error it records the problem, removes the offending
//! key from a copy of the document and tries again, until the rest deserialises. Then the typed
//! config's own semantic checks ([`Validate`]) run, and their key paths are mapped back to lines
//! of the original text. Sections are ordinary serde types owned by the crates that use them
//! (`[tftp]` by chainboot-tftp, `[dhcp]` by chainboot-dhcp, ...): adding a section needs no
//! change here.

pub mod duration;
mod sections;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml_edit::{Document, DocumentMut, Item, Value};

pub use duration::{deserialize_duration, deserialize_opt_duration, parse_duration};
pub use sections::{ServerConfig, ADVERTISE_AUTO};

/// A problem found by a section's semantic check: the key path inside the document (table
/// names, array indices as decimal strings) and what is wrong. Every section's check returns
/// all of its issues at once, in this one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: Vec<String>,
    pub message: String,
}

impl Issue {
    pub fn new(path: Vec<String>, message: String) -> Issue {
        Issue { path, message }
    }

    /// An issue at a path given as string slices.
    pub fn at(path: &[&str], message: impl Into<String>) -> Issue {
        Issue {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", dotted(&self.path), self.message)
        }
    }
}

/// Semantic checks that serde cannot express (pools inside their subnet, groups that point at
/// existing profiles, ...). Paths are from the document root.
pub trait Validate {
    fn validate(&self) -> Vec<Issue>;
}

/// Prefixes the key paths of a section's issues with the section's own path.
pub fn under(prefix: &[&str], issues: Vec<Issue>) -> Vec<Issue> {
    issues
        .into_iter()
        .map(|i| {
            let mut path: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
            path.extend(i.path);
            Issue { path, ..i }
        })
        .collect()
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, as given.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// The key, dotted (`dhcp.subnet[0].pools`), empty for the document itself.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Largest config file read. Real configs are a few kilobytes; the cap keeps a wrong path
/// (a log, an image) or a file that keeps growing from being read whole into memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Reads and loads a config file.
pub fn load_file<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, Problems> {
    let text = read_config_text(path).map_err(|message| {
        Problems(vec![Problem {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message,
        }])
    })?;
    load_str(path, &text)
}

/// Reads a config file, refusing anything but a regular file of at most
/// [`MAX_CONFIG_BYTES`]: reading a FIFO would wait for a writer forever and a device such as
/// /dev/zero never ends. The file is opened without blocking (a FIFO opens at once) and its
/// type is taken from the open descriptor, so it cannot be swapped between check and read.
fn read_config_text(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    let kind = meta.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(format!(
            "cannot read: {what}; a config must be a regular file"
        ));
    }
    let too_big = || format!("cannot read: larger than {MAX_CONFIG_BYTES} bytes (4 MiB)");
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    // The file may grow after the size check: never read more than the cap.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "cannot read: not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Loads config text; `file` is used in messages only.
pub fn load_str<T: DeserializeOwned + Validate>(file: &Path, text: &str) -> Result<T, Problems> {
    // Syntax first, with toml_parser alone: toml_edit 0.23 panics ("all items have spans")
    // building a document from some invalid texts, e.g. "==\n.=" (found by fuzz/config).
    if let Some((offset, message)) = syntax_error(text) {
        let (line, column) = line_col(text, offset);
        return Err(Problems(vec![Problem {
            file: file.to_path_buf(),
            line,
            column,
            key: String::new(),
            message: format!("not valid TOML: {}", message.trim()),
        }]));
    }
    let original = match Document::parse(text.to_string()) {
        Ok(d) => d,
        Err(e) => {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            return Err(Problems(vec![Problem {
                file: file.to_path_buf(),
                line,
                column,
                key: String::new(),
                message: format!("not valid TOML: {}", e.message().trim()),
            }]));
        }
    };
    let mut problems = Vec::new();
    let mut current = text.to_string();
    let mut removed: Vec<Vec<String>> = Vec::new();
    let value: Option<T> = loop {
        match toml_edit::de::from_str::<T>(&current) {
            Ok(v) => break Some(v),
            Err(err) => {
                let located = err.span().and_then(|span| {
                    let doc = Document::parse(current.clone()).ok()?;
                    Some(path_at(doc.as_item(), &span))
                });
                let path = located.unwrap_or_default();
                let message = with_suggestion(err.message());
                if !is_consequence_of_removal(&message, &path, &removed) {
                    problems.push(locate(file, text, &original, &path, message));
                }
                // Remove the offending key and try the rest; stop when nothing can be removed
                // (an error about the whole document) or after a generous number of rounds.
                if path.is_empty() || removed.len() > 200 {
                    break None;
                }
                let Ok(mut doc) = current.parse::<DocumentMut>() else {
                    break None;
                };
                if !remove_in_table(doc.as_table_mut(), &path) {
                    break None;
                }
                removed.push(path);
                current = doc.to_string();
            }
        }
    };
    if let Some(v) = &value {
        if problems.is_empty() {
            for i in v.validate() {
                problems.push(locate(file, text, &original, &i.path, i.message));
            }
        }
    }
    match value {
        Some(v) if problems.is_empty() => Ok(v),
        _ => {
            problems.sort_by_key(|p| (p.line, p.column));
            Err(Problems(problems))
        }
    }
}

/// After removing `a.b` for a type error, serde reports "missing field `b`" on `a`: that is the
/// same mistake, reported already.
fn is_consequence_of_removal(message: &str, path: &[String], removed: &[Vec<String>]) -> bool {
    let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|s| s.split('`').next())
    else {
        return false;
    };
    removed
        .iter()
        .any(|r| r.len() == path.len() + 1 && r[..path.len()] == *path && r[path.len()] == field)
}

/// A problem found after loading (a file a key names does not exist, ...), located at the key
/// `path` in the config `text` as the loader locates its own.
pub fn problem_at(file: &Path, text: &str, path: &[String], message: String) -> Problem {
    match Document::parse(text.to_string()) {
        Ok(doc) => locate(file, text, &doc, path, message),
        Err(_) => Problem {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            key: dotted(path),
            message,
        },
    }
}

fn locate(
    file: &Path,
    text: &str,
    doc: &Document<String>,
    path: &[String],
    message: String,
) -> Problem {
    let span = span_of(doc.as_item(), path);
    let (line, column) = span.map(|s| line_col(text, s.start)).unwrap_or((0, 0));
    Problem {
        file: file.to_path_buf(),
        line,
        column,
        key: dotted(path),
        message,
    }
}

/// `dhcp.subnet[0].pools`.
pub fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// The first syntax error of `text`, as toml_edit would word it: (byte offset, message).
fn syntax_error(text: &str) -> Option<(usize, String)> {
    let source = toml_parser::Source::new(text);
    let tokens = source.lex().into_vec();
    let mut errors: Vec<toml_parser::ParseError> = Vec::new();
    toml_parser::parser::parse_document(&tokens, &mut (), &mut errors);
    let error = errors.into_iter().next()?;
    let mut message = error.description().to_string();
    if let Some(expected) = error.expected() {
        message.push_str(", expected ");
        if expected.is_empty() {
            message.push_str("nothing");
        }
        for (i, e) in expected.iter().enumerate() {
            if i != 0 {
                message.push_str(", ");
            }
            match e {
                toml_parser::Expected::Literal("\n") => message.push_str("newline"),
                toml_parser::Expected::Literal(l) => {
                    message.push_str(&format!("`{}`", l.escape_debug()))
                }
                toml_parser::Expected::Description(d) => message.push_str(d),
                _ => message.push_str("etc"),
            }
        }
    }
    let offset = error
        .unexpected()
        .or(error.context())
        .map(|s| s.start())
        .unwrap_or(text.len());
    Some((offset, message))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(0)
        + 1;
    (line, col)
}

fn contains(outer: &Option<Range<usize>>, inner: &Range<usize>) -> bool {
    outer
        .as_ref()
        .is_some_and(|o| o.start <= inner.start && inner.start < o.end.max(o.start + 1))
}

/// The key path of the deepest key or value whose span holds `span.start`.
fn path_at(item: &Item, span: &Range<usize>) -> Vec<String> {
    let mut path = Vec::new();
    descend(item, span, &mut path);
    path
}

fn descend_table(t: &toml_edit::Table, span: &Range<usize>, path: &mut Vec<String>) -> bool {
    for (k, child) in t.iter() {
        let key_span = t.key(k).and_then(|k| k.span());
        path.push(k.to_string());
        if descend(child, span, path) || contains(&key_span, span) || contains(&child.span(), span)
        {
            return true;
        }
        path.pop();
    }
    false
}

fn descend(item: &Item, span: &Range<usize>, path: &mut Vec<String>) -> bool {
    match item {
        Item::Table(t) => descend_table(t, span, path),
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                path.push(i.to_string());
                if descend_table(t, span, path) || contains(&t.span(), span) {
                    return true;
                }
                path.pop();
            }
            false
        }
        Item::Value(v) => descend_value(v, span, path),
        Item::None => false,
    }
}

fn descend_value(v: &Value, span: &Range<usize>, path: &mut Vec<String>) -> bool {
    match v {
        Value::InlineTable(t) => {
            for (k, child) in t.iter() {
                let key_span = t.key(k).and_then(|k| k.span());
                path.push(k.to_string());
                if descend_value(child, span, path)
                    || contains(&key_span, span)
                    || contains(&child.span(), span)
                {
                    return true;
                }
                path.pop();
            }
            false
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push(i.to_string());
                if descend_value(child, span, path) || contains(&child.span(), span) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

/// The span of the key at `path` (or of its value when it has no key, e.g. an array element),
/// falling back to the nearest ancestor that has one.
fn span_of(root: &Item, path: &[String]) -> Option<Range<usize>> {
    let mut best = None;
    let mut item = Some(Node::Item(root));
    for part in path {
        let Some(node) = item else { break };
        let (next, span) = node.child(part);
        if span.is_some() {
            best = span;
        }
        item = next;
    }
    best
}

enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a toml_edit::Table),
}

impl<'a> Node<'a> {
    fn child(self, part: &str) -> (Option<Node<'a>>, Option<Range<usize>>) {
        match self {
            Node::Item(Item::Table(t)) | Node::Table(t) => match t.get_key_value(part) {
                Some((k, v)) => (Some(Node::Item(v)), k.span().or_else(|| v.span())),
                None => (None, None),
            },
            Node::Item(Item::ArrayOfTables(a)) => {
                match part.parse::<usize>().ok().and_then(|i| a.get(i)) {
                    Some(t) => (Some(Node::Table(t)), t.span()),
                    None => (None, None),
                }
            }
            Node::Item(Item::Value(v)) | Node::Value(v) => match v {
                Value::InlineTable(t) => match t.get_key_value(part) {
                    Some((k, item)) => (Some(Node::Item(item)), k.span().or_else(|| item.span())),
                    None => (None, None),
                },
                Value::Array(a) => match part.parse::<usize>().ok().and_then(|i| a.get(i)) {
                    Some(v) => (Some(Node::Value(v)), v.span()),
                    None => (None, None),
                },
                _ => (None, None),
            },
            _ => (None, None),
        }
    }
}

fn remove_in_table(t: &mut toml_edit::Table, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return t.remove(first).is_some();
    }
    match t.get_mut(first) {
        Some(item) => remove_in_item(item, rest),
        None => false,
    }
}

fn remove_in_item(item: &mut Item, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match item {
        Item::Table(t) => remove_in_table(t, path),
        Item::ArrayOfTables(a) => {
            let Ok(i) = first.parse::<usize>() else {
                return false;
            };
            if i >= a.len() {
                return false;
            }
            if rest.is_empty() {
                a.remove(i);
                return true;
            }
            match a.get_mut(i) {
                Some(t) => remove_in_table(t, rest),
                None => false,
            }
        }
        Item::Value(v) => remove_in_value(v, path),
        Item::None => false,
    }
}

fn remove_in_value(v: &mut Value, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match v {
        Value::InlineTable(t) => {
            if rest.is_empty() {
                return t.remove(first).is_some();
            }
            match t.get_mut(first) {
                Some(child) => remove_in_value(child, rest),
                None => false,
            }
        }
        Value::Array(a) => {
            let Ok(i) = first.parse::<usize>() else {
                return false;
            };
            if i >= a.len() {
                return false;
            }
            if rest.is_empty() {
                a.remove(i);
                return true;
            }
            match a.get_mut(i) {
                Some(child) => remove_in_value(child, rest),
                None => false,
            }
        }
        _ => false,
    }
}

/// Adds "did you mean `x`?" to serde's unknown-field and unknown-variant messages when a known
/// name is close to the one written.
fn with_suggestion(message: &str) -> String {
    let message = message.trim().to_string();
    let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    else {
        return message;
    };
    let Some((written, expected)) = rest.split_once('`') else {
        return message;
    };
    let candidates: Vec<&str> = expected
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    let best = candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(written, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min();
    match best {
        Some((_, c)) => format!("{message}; did you mean `{c}`?"),
        None => message,
    }
}

#[cfg(test)]
mod tests;
