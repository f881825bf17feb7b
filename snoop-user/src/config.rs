//! The configuration file: TOML whose top-level keys are `snoop run`'s long
//! options (`query-interval = "60s"`, `router-port = ["eth1"]`), and whose
//! `[port.NAME]` tables hold one port's settings. The file becomes command
//! line arguments, so every option has one definition, one parser and one
//! set of checks whether it comes from the file or the command line; flags
//! given on the command line come after the file's and override them.
use std::{collections::BTreeMap, ops::Range};

use toml::{Spanned, Value};

/// A key of a `[port.NAME]` table and the `snoop run` option it stands for.
/// Boolean settings name the port in a repeatable option; valued ones
/// give `NAME=VALUE`, lists one `NAME=ITEM` per item.
pub const PORT_KEYS: &[(&str, &str, PortValue)] = &[
    ("router", "router-port", PortValue::Router),
    ("trusted", "trusted-port", PortValue::Switch),
    ("fast-leave", "fast-leave", PortValue::Switch),
    ("max-groups", "port-max-groups", PortValue::Number),
    ("allow", "port-allow", PortValue::List),
    ("deny", "port-deny", PortValue::List),
    ("static-groups", "static-group", PortValue::List),
];

/// What a port setting takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortValue {
    Switch,
    /// A switch, or "never": [`NEVER_ROUTER_OPTION`].
    Router,
    Number,
    List,
}

/// The option `router = "never"` stands for.
pub const NEVER_ROUTER_OPTION: &str = "never-router-port";

/// Options that make no sense in a file: the file itself.
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

/// A file's settings as `snoop run` arguments, each with the line it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileArgs {
    pub args: Vec<FileArg>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileArg {
    pub line: usize,
    /// The file's key as written (`query-interval`, `port.eth1.router`).
    pub key: String,
    /// `--option` or `--option VALUE`.
    pub args: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("line {line}: unknown key `{key}`{hint}")]
    UnknownKey { line: usize, key: String, hint: String },
    #[error("line {line}: `{key}`: {message}")]
    BadValue { line: usize, key: String, message: String },
}

impl ConfigError {
    pub fn line(&self) -> usize {
        match self {
            ConfigError::Syntax { line, .. }
            | ConfigError::UnknownKey { line, .. }
            | ConfigError::BadValue { line, .. } => *line,
        }
    }
}

type Table = BTreeMap<Spanned<String>, Spanned<Value>>;

/// A long option of `snoop run`, as the file may give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionSpec {
    pub name: String,
    /// `--name VALUE`, not a switch.
    pub takes_value: bool,
    /// It may be given more than once (the file gives a list).
    pub repeatable: bool,
}

/// Turns a configuration file into `snoop run` arguments, given the options
/// `snoop run` knows.
pub fn file_args(text: &str, options: &[OptionSpec]) -> Result<FileArgs, ConfigError> {
    let line_of = |span: Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
    let table: Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        line: e.span().map_or(1, line_of),
        message: e.message().trim_end().to_owned(),
    })?;
    let mut args = Vec::new();
    for (key, value) in &table {
        let line = line_of(key.span());
        let name = key.get_ref().as_str();
        if name == "port" {
            port_tables(text, line, &line_of, &mut args)?;
            continue;
        }
        let Some(option) = options.iter().find(|o| o.name == name && !NOT_IN_FILE.contains(&name)) else {
            let hint = if PORT_KEYS.iter().any(|(k, _, _)| *k == name) {
                " (a port's setting: under [port.NAME])".to_owned()
            } else {
                close_match(name, options.iter().map(|o| o.name.as_str()).filter(|o| !NOT_IN_FILE.contains(o)))
                    .map_or(String::new(), |o| format!(" (did you mean `{o}`?)"))
            };
            return Err(ConfigError::UnknownKey { line, key: name.to_owned(), hint });
        };
        let bad =
            |message: String| ConfigError::BadValue { line: line_of(value.span()), key: name.to_owned(), message };
        let flag = format!("--{name}");
        match value.get_ref() {
            Value::Boolean(set) if !option.takes_value => {
                if *set {
                    args.push(FileArg { line, key: name.to_owned(), args: vec![flag] });
                }
            }
            _ if !option.takes_value => return Err(bad("is a switch: true or false".into())),
            Value::Array(_) if !option.repeatable => return Err(bad("takes one value, not a list".into())),
            Value::Array(items) => {
                for item in items {
                    let text = scalar(item).ok_or_else(|| bad("a list of strings or numbers".into()))?;
                    args.push(FileArg { line, key: name.to_owned(), args: vec![flag.clone(), text] });
                }
            }
            item => {
                let text = scalar(item).ok_or_else(|| bad("a string, a number or a list".into()))?;
                args.push(FileArg { line, key: name.to_owned(), args: vec![flag, text] });
            }
        }
    }
    // In the file's order (the table above is sorted by key).
    args.sort_by_key(|arg| arg.line);
    Ok(FileArgs { args })
}

/// The `[port.NAME]` tables, read on their own so their keys keep their lines.
#[derive(serde::Deserialize)]
struct PortTables {
    #[serde(default)]
    port: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<Value>>>,
}

/// `[port.eth1]` tables: `router = true` is `--router-port eth1`,
/// `max-groups = 50` is `--port-max-groups eth1=50`, `allow = ["239.1.0.0/16"]`
/// is `--port-allow eth1=239.1.0.0/16`.
fn port_tables(
    text: &str,
    line: usize,
    line_of: &dyn Fn(Range<usize>) -> usize,
    args: &mut Vec<FileArg>,
) -> Result<(), ConfigError> {
    let tables: PortTables = toml::from_str(text).map_err(|_| ConfigError::BadValue {
        line,
        key: "port".into(),
        message: "one table per port: [port.eth1]".into(),
    })?;
    for (port, settings) in &tables.port {
        let port = port.get_ref();
        for (key, value) in settings {
            let line = line_of(key.span());
            let key = key.get_ref().as_str();
            let full_key = format!("port.{port}.{key}");
            let Some((_, option, kind)) = PORT_KEYS.iter().find(|(k, _, _)| *k == key) else {
                let hint = close_match(key, PORT_KEYS.iter().map(|(k, _, _)| *k)).map_or_else(
                    || format!(" (a port has {})", port_key_list()),
                    |k| format!(" (did you mean `{k}`?)"),
                );
                return Err(ConfigError::UnknownKey { line, key: full_key, hint });
            };
            let bad = |message: &str| ConfigError::BadValue { line, key: full_key.clone(), message: message.into() };
            let flag = format!("--{option}");
            let arg = |value: String| FileArg { line, key: full_key.clone(), args: vec![flag.clone(), value] };
            match (kind, value.get_ref()) {
                (PortValue::Switch | PortValue::Router, Value::Boolean(true)) => args.push(arg(port.clone())),
                (PortValue::Switch | PortValue::Router, Value::Boolean(false)) => {}
                (PortValue::Router, Value::String(never)) if never == "never" => args.push(FileArg {
                    line,
                    key: full_key.clone(),
                    args: vec![format!("--{NEVER_ROUTER_OPTION}"), port.clone()],
                }),
                (PortValue::Switch, _) => return Err(bad("true or false")),
                (PortValue::Router, _) => return Err(bad("true, false or \"never\"")),
                (PortValue::Number, Value::Integer(n)) => args.push(arg(format!("{port}={n}"))),
                (PortValue::Number, _) => return Err(bad("a number (0: no limit)")),
                (PortValue::List, Value::Array(items)) => {
                    for item in items {
                        let Value::String(item) = item else { return Err(bad("a list of strings")) };
                        args.push(arg(format!("{port}={item}")));
                    }
                }
                (PortValue::List, _) => return Err(bad("a list of strings")),
            }
        }
    }
    Ok(())
}

fn port_key_list() -> String {
    PORT_KEYS.iter().map(|(k, _, _)| format!("`{k}`")).collect::<Vec<_>>().join(", ")
}

/// A string, number or boolean as the command line would spell it.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Integer(n) => Some(n.to_string()),
        Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// The known option nearest to a misspelt one (at most two edits away).
fn close_match<'a>(name: &str, options: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    options.map(|o| (edit_distance(name, o), o)).filter(|(d, _)| *d <= 2).min().map(|(_, o)| o)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(previous + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Vec<OptionSpec> {
        [
            ("bridge", true, false),
            ("query-interval", true, false),
            ("router-port", true, true),
            ("keep-state", false, false),
            ("config", true, false),
            ("help", false, false),
            ("version", false, false),
        ]
        .into_iter()
        .map(|(name, takes_value, repeatable)| OptionSpec { name: name.to_owned(), takes_value, repeatable })
        .collect()
    }

    fn args(text: &str) -> Result<Vec<(usize, Vec<String>)>, ConfigError> {
        Ok(file_args(text, &options())?.args.into_iter().map(|a| (a.line, a.args)).collect())
    }

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn keys_become_flags_with_their_lines() {
        let text = "# a lab router\nbridge = \"br0\"\nquery-interval = \"60s\"\nrouter-port = [\"eth1\", \"eth2\"]\n\
                    keep-state = true\n\n[port.eth3]\nfast-leave = true\nmax-groups = 50\ntrusted = false\n\
                    allow = [\"239.1.0.0/16\", \"ff3e::/16\"]\nstatic-groups = [\"239.1.1.1\"]\n\
                    [port.eth4]\nrouter = \"never\"\n";
        assert_eq!(
            args(text).unwrap(),
            vec![
                (2, words(&["--bridge", "br0"])),
                (3, words(&["--query-interval", "60s"])),
                (4, words(&["--router-port", "eth1"])),
                (4, words(&["--router-port", "eth2"])),
                (5, words(&["--keep-state"])),
                (8, words(&["--fast-leave", "eth3"])),
                (9, words(&["--port-max-groups", "eth3=50"])),
                (11, words(&["--port-allow", "eth3=239.1.0.0/16"])),
                (11, words(&["--port-allow", "eth3=ff3e::/16"])),
                (12, words(&["--static-group", "eth3=239.1.1.1"])),
                (14, words(&["--never-router-port", "eth4"])),
            ]
        );
        assert_eq!(args("keep-state = false\n").unwrap(), vec![]);
    }

    #[test]
    fn mistakes_name_their_line() {
        let unknown = args("bridge = \"br0\"\nquery-intreval = \"60s\"\n").unwrap_err();
        assert_eq!(unknown.to_string(), "line 2: unknown key `query-intreval` (did you mean `query-interval`?)");
        // clap's own flags are no keys, and no hint.
        assert_eq!(args("help = 1\n").unwrap_err().to_string(), "line 1: unknown key `help`");
        let misplaced = args("\nrouter = true\n").unwrap_err();
        assert_eq!(misplaced.to_string(), "line 2: unknown key `router` (a port's setting: under [port.NAME])");
        let in_port = args("[port.eth1]\nrouter = true\nfastleave = true\n").unwrap_err();
        assert_eq!(in_port.to_string(), "line 3: unknown key `port.eth1.fastleave` (did you mean `fast-leave`?)");
        let switch = args("\n\nkeep-state = \"yes\"\n").unwrap_err();
        assert_eq!(switch.to_string(), "line 3: `keep-state`: is a switch: true or false");
        let router = args("[port.eth1]\nrouter = \"sometimes\"\n").unwrap_err();
        assert_eq!(router.to_string(), "line 2: `port.eth1.router`: true, false or \"never\"");
        let limit = args("[port.eth1]\n\nmax-groups = \"many\"\n").unwrap_err();
        assert_eq!(limit.to_string(), "line 3: `port.eth1.max-groups`: a number (0: no limit)");
        let allow = args("[port.eth1]\nallow = \"239.1.0.0/16\"\n").unwrap_err();
        assert_eq!(allow.to_string(), "line 2: `port.eth1.allow`: a list of strings");
        assert_eq!(args("bridge = \"br0\"\nbridge = \"br1\"\n").unwrap_err().line(), 2);
        let list = args("\nquery-interval = [\"1s\", \"2s\"]\n").unwrap_err();
        assert_eq!(list.to_string(), "line 2: `query-interval`: takes one value, not a list");
        assert_eq!(args("query-interval = \n").unwrap_err().line(), 1);
        // The file cannot name another file.
        assert!(matches!(args("config = \"x.toml\"\n"), Err(ConfigError::UnknownKey { line: 1, .. })));
    }
}
