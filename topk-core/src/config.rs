//! Layered configuration shared by every binary.
//!
//! Precedence, lowest to highest: built-in default, TOML file (`--config` / `TOPK_CONFIG`),
//! environment variable, command-line flag. Each binary declares one `clap::Parser` struct whose
//! fields are its options; clap handles defaults, env vars and flags (and documents all of
//! them in `--help`), and [`load`] then lets keys from the TOML file replace the values that
//! came from a default. The file uses the same flat key names as the struct fields
//! (`clickhouse_url = "..."`); an unknown key is an error, so a typo never goes unnoticed.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The arg id every binary uses for its config-file option.
pub const CONFIG_FILE_ARG: &str = "config";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    ParseFile {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config file {path}: unknown key `{key}` (known keys: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("config file {path}: {message}")]
    InvalidValue { path: PathBuf, message: String },
    #[error(transparent)]
    Cli(#[from] clap::Error),
}

/// Parses the process's arguments into `T`, applying the TOML file if one is named.
///
/// `--help`, `--version` and argument errors print and exit, as clap always does.
pub fn load<T>() -> T
where
    T: CommandFactory + FromArgMatches + Serialize + DeserializeOwned,
{
    match load_from(std::env::args_os()) {
        Ok(config) => config,
        Err(ConfigError::Cli(clap_error)) => clap_error.exit(),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    }
}

/// [`load`] with explicit arguments (the first one is the program name), for tests.
pub fn load_from<T, I, A>(args: I) -> Result<T, ConfigError>
where
    T: CommandFactory + FromArgMatches + Serialize + DeserializeOwned,
    I: IntoIterator<Item = A>,
    A: Into<OsString> + Clone,
{
    let matches = T::command().try_get_matches_from(args)?;
    let from_cli_and_env = T::from_arg_matches(&matches)?;
    let Some(path) = config_file_path(&matches) else {
        return Ok(from_cli_and_env);
    };
    apply_file(&from_cli_and_env, &matches, &path)
}

fn config_file_path(matches: &ArgMatches) -> Option<PathBuf> {
    let has_config_arg = matches.ids().any(|id| id.as_str() == CONFIG_FILE_ARG);
    if !has_config_arg {
        return None;
    }
    matches.get_one::<PathBuf>(CONFIG_FILE_ARG).cloned()
}

fn apply_file<T>(parsed: &T, matches: &ArgMatches, path: &Path) -> Result<T, ConfigError>
where
    T: CommandFactory + Serialize + DeserializeOwned,
{
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let file_table: toml::Table =
        toml::from_str(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source,
        })?;
    // Every declared option, not just those with a value (`ids()` skips options that have
    // neither a default nor a value, which the file may well set).
    let command = T::command();
    let known_keys: BTreeSet<&str> = command
        .get_arguments()
        .map(|argument| argument.get_id().as_str())
        .filter(|id| *id != CONFIG_FILE_ARG && *id != "help" && *id != "version")
        .collect();
    let invalid = |message: String| ConfigError::InvalidValue {
        path: path.to_owned(),
        message,
    };
    let mut merged = serde_json::to_value(parsed).map_err(|error| invalid(error.to_string()))?;
    let merged_object = merged
        .as_object_mut()
        .ok_or_else(|| invalid("configuration is not a table of options".to_owned()))?;
    for (key, file_value) in file_table {
        if !known_keys.contains(key.as_str()) {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key,
                known: known_keys.iter().copied().collect::<Vec<_>>().join(", "),
            });
        }
        let set_by_user = matches!(
            matches.value_source(&key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if set_by_user {
            continue;
        }
        let json_value =
            serde_json::to_value(file_value).map_err(|error| invalid(error.to_string()))?;
        merged_object.insert(key, json_value);
    }
    serde_json::from_value(merged).map_err(|error| invalid(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde::Deserialize;
    use std::io::Write;

    #[derive(Debug, Parser, Serialize, Deserialize)]
    struct Example {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "a")]
        alpha: String,
        #[arg(long, default_value_t = 1)]
        beta: u32,
        #[arg(long, env = "TOPK_CONFIG_TEST_GAMMA", default_value_t = 5)]
        gamma: u32,
        #[arg(long)]
        delta: Option<String>,
    }

    fn write_file(text: &str) -> tempfile_like::TempFile {
        let file = tempfile_like::TempFile::new();
        std::fs::File::create(&file.path)
            .and_then(|mut handle| handle.write_all(text.as_bytes()))
            .expect("write temp config");
        file
    }

    /// A tiny self-deleting temp file, so the core crate needs no extra dev-dependency.
    mod tempfile_like {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        static COUNTER: AtomicU32 = AtomicU32::new(0);

        pub struct TempFile {
            pub path: PathBuf,
        }

        impl TempFile {
            pub fn new() -> Self {
                let unique = COUNTER.fetch_add(1, Ordering::SeqCst);
                let path = std::env::temp_dir().join(format!(
                    "topk-config-test-{}-{unique}.toml",
                    std::process::id()
                ));
                Self { path }
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    #[test]
    fn defaults_without_file() {
        let config: Example = load_from(["prog"]).unwrap();
        assert_eq!(config.alpha, "a");
        assert_eq!(config.beta, 1);
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        let file = write_file("alpha = \"from-file\"\nbeta = 7\n");
        let path = file.path.to_str().unwrap();
        let config: Example = load_from(["prog", "--config", path, "--beta", "9"]).unwrap();
        assert_eq!(config.alpha, "from-file");
        assert_eq!(config.beta, 9);
    }

    #[test]
    fn file_sets_an_option_without_default() {
        let file = write_file("delta = \"from-file\"\n");
        let path = file.path.to_str().unwrap();
        let config: Example = load_from(["prog", "--config", path]).unwrap();
        assert_eq!(config.delta.as_deref(), Some("from-file"));
    }

    #[test]
    fn unknown_key_is_an_error() {
        let file = write_file("alpah = \"typo\"\n");
        let path = file.path.to_str().unwrap();
        let error = load_from::<Example, _, _>(["prog", "--config", path]).unwrap_err();
        assert!(
            matches!(error, ConfigError::UnknownKey { ref key, .. } if key == "alpah"),
            "{error}"
        );
    }

    #[test]
    fn wrong_type_in_file_is_an_error() {
        let file = write_file("beta = \"many\"\n");
        let path = file.path.to_str().unwrap();
        let error = load_from::<Example, _, _>(["prog", "--config", path]).unwrap_err();
        assert!(matches!(error, ConfigError::InvalidValue { .. }), "{error}");
    }
}
