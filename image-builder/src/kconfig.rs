//! Kernel config fragments: parsing, merging onto a base config, and checking
//! that every option a fragment asked for survived `olddefconfig`.
//!
//! Kconfig silently drops an option whose dependencies are not met (KVM without
//! HIGH_RES_TIMERS is the classic case), so a build that trusted the fragment
//! would produce a kernel without the feature and nobody would notice until
//! boot. [`verify`] turns every such drop into an error that names the option.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// The value a fragment asks for, or that a `.config` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `=y`
    Yes,
    /// `=m`; fragments here must not ask for it (there are no modules), but a
    /// `.config` may contain it.
    Module,
    /// `# CONFIG_X is not set` or `=n`
    No,
    /// A string (stored without quotes) or a number, compared as written.
    Literal(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Yes => f.write_str("y"),
            Value::Module => f.write_str("m"),
            Value::No => f.write_str("n"),
            Value::Literal(s) => write!(f, "{s}"),
        }
    }
}

/// One `CONFIG_NAME=value` request, with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Symbol name without the `CONFIG_` prefix.
    pub name: String,
    pub value: Value,
    /// The line as written in the fragment (for error messages).
    pub line: usize,
    /// Whether the literal was quoted (a string) in the fragment.
    quoted: bool,
}

impl Setting {
    /// The line to append to a `.config` to request this setting.
    pub fn config_line(&self) -> String {
        match &self.value {
            Value::Yes => format!("CONFIG_{}=y", self.name),
            Value::Module => format!("CONFIG_{}=m", self.name),
            Value::No => format!("# CONFIG_{} is not set", self.name),
            Value::Literal(s) if self.quoted => {
                format!("CONFIG_{}=\"{}\"", self.name, s.replace('\\', "\\\\").replace('"', "\\\""))
            }
            Value::Literal(s) => format!("CONFIG_{}={}", self.name, s),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FragmentError {
    #[error("{file}:{line}: cannot read `{text}`: expected `CONFIG_NAME=y`, `CONFIG_NAME=\"text\"`, `CONFIG_NAME=123` or `# CONFIG_NAME is not set`")]
    Malformed { file: String, line: usize, text: String },
    #[error(
        "{file}:{line}: CONFIG_{name}=m asks for a module, but the kvmos kernels have no loadable modules: use =y"
    )]
    ModuleRequested { file: String, line: usize, name: String },
    #[error("{file}:{line}: CONFIG_{name} is set twice (first on line {first})")]
    Duplicate { file: String, line: usize, first: usize, name: String },
}

/// Parses a fragment. `file` only names it in errors.
pub fn parse_fragment(file: &str, text: &str) -> Result<Vec<Setting>, FragmentError> {
    let mut out: Vec<Setting> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        let parsed = if let Some(rest) = trimmed.strip_prefix('#') {
            // Only `# CONFIG_X is not set` means something; other comments are prose.
            match rest.trim().strip_prefix("CONFIG_").and_then(|r| r.strip_suffix(" is not set")) {
                Some(name) if valid_name(name) => Some((name.to_string(), Value::No, false)),
                Some(_) => return Err(malformed(file, line, raw)),
                None => None,
            }
        } else {
            Some(parse_assignment(trimmed).ok_or_else(|| malformed(file, line, raw))?)
        };
        let Some((name, value, quoted)) = parsed else { continue };
        if value == Value::Module {
            return Err(FragmentError::ModuleRequested { file: file.into(), line, name });
        }
        if let Some(first) = seen.insert(name.clone(), line) {
            return Err(FragmentError::Duplicate { file: file.into(), line, first, name });
        }
        out.push(Setting { name, value, line, quoted });
    }
    Ok(out)
}

fn malformed(file: &str, line: usize, raw: &str) -> FragmentError {
    FragmentError::Malformed { file: file.into(), line, text: raw.trim().to_string() }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Parses `CONFIG_NAME=value` into (name, value, quoted).
fn parse_assignment(s: &str) -> Option<(String, Value, bool)> {
    let (lhs, rhs) = s.split_once('=')?;
    let name = lhs.strip_prefix("CONFIG_")?;
    if !valid_name(name) {
        return None;
    }
    let (value, quoted) = match rhs {
        "y" => (Value::Yes, false),
        "m" => (Value::Module, false),
        "n" => (Value::No, false),
        _ if rhs.len() >= 2 && rhs.starts_with('"') && rhs.ends_with('"') => {
            let inner = &rhs[1..rhs.len() - 1];
            (Value::Literal(inner.replace("\\\"", "\"").replace("\\\\", "\\")), true)
        }
        _ if !rhs.is_empty() && rhs.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            (Value::Literal(rhs.to_string()), false)
        }
        _ => return None,
    };
    Some((name.to_string(), value, quoted))
}

/// Reads the symbols of a generated `.config`.
pub fn parse_dotconfig(text: &str) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("# CONFIG_").and_then(|r| r.strip_suffix(" is not set")) {
            map.insert(name.to_string(), Value::No);
        } else if let Some((name, value, _)) = parse_assignment(line) {
            map.insert(name, value);
        }
    }
    map
}

/// Appends the fragment to a base `.config`. Kconfig reads a `.config` top to
/// bottom and the last assignment of a symbol wins, so appending is a merge.
pub fn merge(base: &str, fragment_name: &str, settings: &[Setting]) -> String {
    let mut out = String::with_capacity(base.len() + settings.len() * 32);
    out.push_str(base);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("# --- merged from {fragment_name} by kvmos-image ---\n"));
    for s in settings {
        out.push_str(&s.config_line());
        out.push('\n');
    }
    out
}

/// An option that did not come out of `olddefconfig` as the fragment asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub name: String,
    pub line: usize,
    pub wanted: Value,
    pub got: Value,
    /// Whether any Kconfig file in the source defines the symbol at all.
    pub known: bool,
    /// The symbol's `depends on` lines, to show the admin what is missing.
    pub depends_on: Vec<String>,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.known {
            return write!(
                f,
                "line {}: CONFIG_{} is not an option of this kernel source (misspelt, or removed in this version): remove it from the fragment",
                self.line, self.name
            );
        }
        write!(
            f,
            "line {}: CONFIG_{} was asked to be {} but olddefconfig left it {}",
            self.line, self.name, self.wanted, self.got
        )?;
        if !self.depends_on.is_empty() {
            write!(f, "; it needs: {}", self.depends_on.join(" && "))?;
        }
        Ok(())
    }
}

/// Compares the fragment's requests with the final `.config`.
/// `kconfig_index` says whether a symbol exists and what it depends on.
pub fn verify(settings: &[Setting], final_config: &str, kconfig_index: &KconfigIndex) -> Vec<Dropped> {
    let actual = parse_dotconfig(final_config);
    let mut dropped = Vec::new();
    for s in settings {
        let got = actual.get(&s.name).cloned().unwrap_or(Value::No);
        let ok = match (&s.value, &got) {
            (Value::No, Value::No) => true,
            (wanted, got) => wanted == got,
        };
        if !ok {
            let info = kconfig_index.symbols.get(&s.name);
            dropped.push(Dropped {
                name: s.name.clone(),
                line: s.line,
                wanted: s.value.clone(),
                got,
                known: info.is_some(),
                depends_on: info.map(|i| i.depends_on.clone()).unwrap_or_default(),
            });
        }
    }
    dropped
}

/// What the Kconfig files of a source tree say about each symbol (only the
/// parts needed to explain a dropped option).
#[derive(Debug, Default)]
pub struct KconfigIndex {
    pub symbols: BTreeMap<String, SymbolInfo>,
}

#[derive(Debug, Default, Clone)]
pub struct SymbolInfo {
    pub depends_on: Vec<String>,
}

impl KconfigIndex {
    /// Scans every `Kconfig*` file below `src`.
    pub fn scan(src: &Path) -> std::io::Result<Self> {
        let mut index = KconfigIndex::default();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let ty = entry.file_type()?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if ty.is_dir() {
                    if !name.starts_with('.') {
                        stack.push(entry.path());
                    }
                } else if ty.is_file() && name.starts_with("Kconfig") {
                    let text = std::fs::read_to_string(entry.path())?;
                    index.add_file(&text);
                }
            }
        }
        Ok(index)
    }

    /// Adds the symbols defined in one Kconfig file.
    pub fn add_file(&mut self, text: &str) {
        let mut current: Option<String> = None;
        for line in text.lines() {
            let t = line.trim();
            let mut words = t.split_whitespace();
            match words.next() {
                Some("config") | Some("menuconfig") => {
                    current = words.next().map(str::to_string);
                    if let Some(name) = &current {
                        self.symbols.entry(name.clone()).or_default();
                    }
                }
                Some("depends") if t.starts_with("depends on") => {
                    if let Some(name) = &current {
                        let dep = t["depends on".len()..].trim().to_string();
                        if let Some(sym) = self.symbols.get_mut(name) {
                            if !sym.depends_on.contains(&dep) {
                                sym.depends_on.push(dep);
                            }
                        }
                    }
                }
                Some("choice") | Some("endchoice") | Some("menu") | Some("endmenu") | Some("if") | Some("endif")
                | Some("comment") | Some("source") => current = None,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let s = parse_fragment(
            "f",
            "# a comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"console=ttyS0 x=\\\"q\\\"\"\nCONFIG_D=0x10\nCONFIG_E=n\n\n",
        )
        .unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].value, Value::Yes);
        assert_eq!(s[1].value, Value::No);
        assert_eq!(s[2].value, Value::Literal("console=ttyS0 x=\"q\"".into()));
        assert_eq!(s[2].config_line(), "CONFIG_C=\"console=ttyS0 x=\\\"q\\\"\"");
        assert_eq!(s[3].config_line(), "CONFIG_D=0x10");
        assert_eq!(s[4].config_line(), "# CONFIG_E is not set");
    }

    #[test]
    fn rejects_malformed_module_and_duplicate_lines() {
        let e = parse_fragment("host.config", "CONFIG_A=y\nKVM=y\n").unwrap_err();
        assert_eq!(e, FragmentError::Malformed { file: "host.config".into(), line: 2, text: "KVM=y".into() });
        assert!(e.to_string().contains("host.config:2"));
        let e = parse_fragment("f", "CONFIG_A=m\n").unwrap_err();
        assert!(matches!(e, FragmentError::ModuleRequested { .. }), "{e}");
        let e = parse_fragment("f", "CONFIG_A=y\nCONFIG_A=n\n").unwrap_err();
        assert_eq!(e, FragmentError::Duplicate { file: "f".into(), line: 2, first: 1, name: "A".into() });
        assert!(parse_fragment("f", "CONFIG_lower=y\n").is_err());
        assert!(parse_fragment("f", "CONFIG_A=\"unterminated\n").is_err());
    }

    #[test]
    fn merge_appends_so_fragment_wins() {
        let settings = parse_fragment("f", "CONFIG_A=y\n").unwrap();
        let merged = merge("# CONFIG_A is not set\nCONFIG_B=y", "f", &settings);
        assert_eq!(parse_dotconfig(&merged).get("A"), Some(&Value::Yes));
        assert_eq!(parse_dotconfig(&merged).get("B"), Some(&Value::Yes));
    }

    #[test]
    fn verify_names_dropped_and_unknown_options() {
        let mut index = KconfigIndex::default();
        index.add_file("config KVM\n\ttristate \"KVM\"\n\tdepends on HIGH_RES_TIMERS\nconfig SERIAL\n\tbool\nconfig CMDLINE\n\tstring\n");
        let settings = parse_fragment(
            "f",
            "CONFIG_KVM=y\nCONFIG_SERIAL=y\nCONFIG_NOPE=y\n# CONFIG_GONE is not set\nCONFIG_CMDLINE=\"a b\"\n",
        )
        .unwrap();
        let final_config = "CONFIG_SERIAL=y\n# CONFIG_KVM is not set\nCONFIG_CMDLINE=\"a b\"\n";
        let dropped = verify(&settings, final_config, &index);
        assert_eq!(dropped.len(), 2);
        assert_eq!(dropped[0].name, "KVM");
        assert!(dropped[0].known);
        assert_eq!(dropped[0].depends_on, vec!["HIGH_RES_TIMERS".to_string()]);
        let msg = dropped[0].to_string();
        assert!(msg.contains("CONFIG_KVM") && msg.contains("HIGH_RES_TIMERS"), "{msg}");
        assert_eq!(dropped[1].name, "NOPE");
        assert!(!dropped[1].known);
        assert!(dropped[1].to_string().contains("not an option of this kernel"));
    }
}
