//! The user's identities: named Ed25519 keys under the config directory,
//! and which one is current.
//!
//! ```text
//! <config>/identity.key           the identity named `default`
//! <config>/identities/<name>.key  the others (mode 0600, seed as hex)
//! <config>/current-identity       the current identity's name
//! ```
//!
//! `<config>` is `$CELLAR_CONFIG_DIR`, or `<user config dir>/cellar`.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cellar_agent::Identity;

/// The name of the identity created on first use.
pub const DEFAULT: &str = "default";

/// The identities in one config directory.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store under `$CELLAR_CONFIG_DIR` or the user's config directory.
    pub fn open_default() -> Self {
        let dir = std::env::var_os("CELLAR_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                dirs::config_dir()
                    .unwrap_or_else(|| PathBuf::from(".cellar"))
                    .join("cellar")
            });
        Store { dir }
    }

    /// The store in `dir`.
    #[cfg(test)]
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    /// The key file of identity `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        if name == DEFAULT {
            self.dir.join("identity.key")
        } else {
            self.dir.join("identities").join(format!("{name}.key"))
        }
    }

    /// The current identity's name (`default` unless changed).
    pub fn current(&self) -> String {
        fs::read_to_string(self.dir.join("current-identity"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT.to_string())
    }

    /// Loads the current identity; `default` is created on first use.
    pub fn load_current(&self) -> Result<(String, Identity)> {
        let name = self.current();
        let path = self.path(&name);
        let identity = if name == DEFAULT {
            Identity::load_or_create(&path)?
        } else {
            Identity::load(&path).with_context(|| {
                format!(
                    "the current identity `{name}` is missing; `{} identity use default`",
                    crate::invocation::cellar()
                )
            })?
        };
        Ok((name, identity))
    }

    /// Creates identity `name`.
    pub fn create(&self, name: &str) -> Result<Identity> {
        check_name(name)?;
        let path = self.path(name);
        if path.exists() {
            bail!("identity `{name}` already exists ({})", path.display());
        }
        let identity = Identity::generate()?;
        identity.save(&path)?;
        Ok(identity)
    }

    /// Every identity's name, sorted (`default` always included).
    pub fn list(&self) -> Result<Vec<String>> {
        let mut names = vec![DEFAULT.to_string()];
        let dir = self.dir.join("identities");
        if dir.is_dir() {
            for entry in
                fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
            {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "key")
                    && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                    && stem != DEFAULT
                {
                    names.push(stem.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Makes `name` the current identity.
    pub fn set_current(&self, name: &str) -> Result<()> {
        check_name(name)?;
        if name != DEFAULT && !self.path(name).exists() {
            bail!(
                "there is no identity `{name}`; create it with `{} identity new {name}`",
                crate::invocation::cellar()
            );
        }
        fs::create_dir_all(&self.dir)?;
        fs::write(self.dir.join("current-identity"), format!("{name}\n"))
            .with_context(|| format!("cannot write to {}", self.dir.display()))
    }

    /// Loads identity `name` (`default` is created on first use).
    pub fn load(&self, name: &str) -> Result<Identity> {
        check_name(name)?;
        let path = self.path(name);
        if name == DEFAULT {
            return Ok(Identity::load_or_create(&path)?);
        }
        if !path.exists() {
            bail!("there is no identity `{name}`");
        }
        Ok(Identity::load(&path)?)
    }
}

/// Names are short and safe as file names.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if !ok {
        bail!("`{name}` is not a valid identity name (letters, digits, '-', '_', '.')");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identities_are_created_listed_and_switched() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        assert_eq!(store.current(), DEFAULT);
        let (name, default) = store.load_current().unwrap();
        assert_eq!(name, DEFAULT);
        let ci = store.create("ci").unwrap();
        assert_ne!(ci.principal(), default.principal());
        assert!(store.create("ci").is_err());
        assert!(store.create("../x").is_err());
        let mode = fs::metadata(store.path("ci")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.list().unwrap(), ["ci", "default"]);
        assert!(store.set_current("nobody").is_err());
        store.set_current("ci").unwrap();
        let (name, current) = store.load_current().unwrap();
        assert_eq!(name, "ci");
        assert_eq!(current.principal(), ci.principal());
    }
}
