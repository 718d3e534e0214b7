//! Command-line options: `--name value` pairs and bare `--flag`s, no dependency.

use std::io;
use std::str::FromStr;

/// Parsed options of one command.
#[derive(Debug, Default)]
pub(crate) struct Args {
    options: Vec<(String, Option<String>)>,
}

impl Args {
    /// Parses `--name value` and `--flag` items; a value is anything not starting with `--`.
    pub(crate) fn parse_from(items: &[String]) -> io::Result<Self> {
        let mut options = Vec::new();
        let mut i = 0;
        while i < items.len() {
            let Some(name) = items[i].strip_prefix("--") else {
                return Err(io::Error::other(format!(
                    "unexpected argument {:?}",
                    items[i]
                )));
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => match items.get(i + 1) {
                    Some(v) if !v.starts_with("--") => {
                        i += 1;
                        (name.to_owned(), Some(v.clone()))
                    }
                    _ => (name.to_owned(), None),
                },
            };
            options.push((name, value));
            i += 1;
        }
        Ok(Self { options })
    }

    /// The value of the last `--name value`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// True if `--name` was given.
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| n == name)
    }

    /// The value of `--name` parsed as `T`; `Ok(None)` when absent.
    pub(crate) fn parse<T: FromStr>(&self, name: &str) -> io::Result<Option<T>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| io::Error::other(format!("--{name}: cannot parse {v:?}"))),
        }
    }

    /// The value of `--name` parsed as `T`, or `default`.
    pub(crate) fn parse_or<T: FromStr>(&self, name: &str, default: T) -> io::Result<T> {
        Ok(self.parse(name)?.unwrap_or(default))
    }

    /// Fails on an option not in `known`.
    pub(crate) fn only(&self, known: &[&str]) -> io::Result<()> {
        match self
            .options
            .iter()
            .find(|(n, _)| !known.contains(&n.as_str()))
        {
            Some((n, _)) => Err(io::Error::other(format!("unknown option --{n}"))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Args {
        let items: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        Args::parse_from(&items).unwrap()
    }

    #[test]
    fn values_and_flags() {
        let a = args("--quick --out docs/x.md --repeats=3 --raw");
        assert!(a.flag("quick") && a.flag("raw") && !a.flag("out2"));
        assert_eq!(a.get("out"), Some("docs/x.md"));
        assert_eq!(a.parse::<u32>("repeats").unwrap(), Some(3));
        assert_eq!(a.parse_or("missing", 7u32).unwrap(), 7);
        assert!(a.parse::<u32>("out").is_err());
        assert!(a.only(&["quick", "out", "repeats", "raw"]).is_ok());
        assert!(a.only(&["quick"]).is_err());
        assert!(Args::parse_from(&["stray".to_owned()]).is_err());
    }
}
