//! Reading a TOML config file: a missing or unreadable file and a file
//! that does not parse (unknown keys included, with `deny_unknown_fields`)
//! are errors that name the file.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Parse `path` as TOML into `T`.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct C {
        #[allow(dead_code)]
        a: Option<u32>,
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        assert!(matches!(read_toml::<C>(&p), Err(ConfigError::Read { .. })));
        std::fs::write(&p, "b = 1\n").unwrap();
        let e = read_toml::<C>(&p).unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains("c.toml") && chain.contains('b'), "{chain}");
        std::fs::write(&p, "a = 1\n").unwrap();
        assert!(read_toml::<C>(&p).is_ok());
    }
}
