//! Dockerfiles: stages, their ENV, ENTRYPOINT/CMD and the binaries they copy.

use std::collections::BTreeMap;

use crate::catalog::Catalog;
use crate::findings::Findings;
use crate::invocation::{check_argv, check_env_for, check_topk_env_anywhere};

#[derive(Debug, Clone, Default)]
pub struct Stage {
    pub name: Option<String>,
    /// The image or earlier stage it starts from.
    pub base: String,
    pub env: Vec<(String, String)>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// (sources, destination) of every COPY / ADD.
    pub copies: Vec<(Vec<String>, String)>,
    pub runs: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Dockerfile {
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut dockerfile = Self::default();
        for instruction in logical_lines(text) {
            let (keyword, rest) = instruction
                .split_once(char::is_whitespace)
                .map_or((instruction.as_str(), ""), |(keyword, rest)| {
                    (keyword, rest.trim())
                });
            let keyword = keyword.to_ascii_uppercase();
            if keyword == "FROM" {
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|word| !word.starts_with("--"))
                    .collect();
                let name = match words.as_slice() {
                    [_, as_keyword, name] if as_keyword.eq_ignore_ascii_case("as") => {
                        Some((*name).to_owned())
                    }
                    [_] => None,
                    _ => return Err(format!("cannot read `FROM {rest}`")),
                };
                dockerfile.stages.push(Stage {
                    name,
                    base: words[0].to_owned(),
                    ..Stage::default()
                });
                continue;
            }
            if matches!(keyword.as_str(), "ARG" | "#") {
                continue;
            }
            let stage = dockerfile
                .stages
                .last_mut()
                .ok_or_else(|| format!("`{keyword}` before the first FROM"))?;
            match keyword.as_str() {
                "ENV" => stage.env.extend(parse_env(rest)?),
                "ENTRYPOINT" => stage.entrypoint = Some(exec_form(rest)?),
                "CMD" => stage.cmd = Some(exec_form(rest)?),
                "COPY" | "ADD" => {
                    let words: Vec<String> = if rest.starts_with('[') {
                        exec_form(rest)?
                    } else {
                        rest.split_whitespace()
                            .filter(|word| !word.starts_with("--"))
                            .map(str::to_owned)
                            .collect()
                    };
                    let (destination, sources) = words
                        .split_last()
                        .ok_or_else(|| format!("empty `{keyword}`"))?;
                    stage.copies.push((sources.to_vec(), destination.clone()));
                }
                "RUN" => stage.runs.push(rest.to_owned()),
                _ => {}
            }
        }
        if dockerfile.stages.is_empty() {
            return Err("no FROM".to_owned());
        }
        Ok(dockerfile)
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages
            .iter()
            .find(|stage| stage.name.as_deref() == Some(name))
    }

    /// The stage and the stages it builds on, nearest first.
    pub fn chain<'a>(&'a self, stage: &'a Stage) -> Vec<&'a Stage> {
        let mut chain = vec![stage];
        while let Some(parent) = self.stage(&chain[chain.len() - 1].base) {
            if chain.len() > self.stages.len() {
                break;
            }
            chain.push(parent);
        }
        chain
    }

    /// ENTRYPOINT + CMD in effect for the stage (inherited from its bases).
    pub fn argv(&self, stage: &Stage) -> Vec<String> {
        let chain = self.chain(stage);
        let entrypoint = chain
            .iter()
            .find_map(|stage| stage.entrypoint.clone())
            .unwrap_or_default();
        let cmd = chain
            .iter()
            .find_map(|stage| stage.cmd.clone())
            .unwrap_or_default();
        entrypoint.into_iter().chain(cmd).collect()
    }

    /// The ENV in effect for the stage, later settings winning.
    pub fn env(&self, stage: &Stage) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for stage in self.chain(stage).into_iter().rev() {
            env.extend(stage.env.iter().cloned());
        }
        env
    }

    /// The workspace binary the stage's ENTRYPOINT runs, if any.
    pub fn entrypoint_binary(&self, catalog: &Catalog, stage: &Stage) -> Option<String> {
        self.argv(stage)
            .first()
            .and_then(|program| catalog.binary_named_by(program))
    }
}

/// Instructions with continuation lines joined and comment lines dropped.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && !current.is_empty()) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.trim().is_empty() {
                lines.push(std::mem::take(&mut current));
            }
            current.clear();
        }
    }
    lines
}

/// `["a", "b"]` (exec form) or `a b` (shell form, run by /bin/sh -c).
fn exec_form(text: &str) -> Result<Vec<String>, String> {
    if text.starts_with('[') {
        serde_json::from_str(text).map_err(|error| format!("bad exec form `{text}`: {error}"))
    } else {
        Ok(vec!["/bin/sh".into(), "-c".into(), text.to_owned()])
    }
}

/// `ENV A=1 B="two"` or the legacy `ENV A 1`.
fn parse_env(text: &str) -> Result<Vec<(String, String)>, String> {
    let first = text.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        let (name, value) = text
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("bad ENV `{text}`"))?;
        return Ok(vec![(name.to_owned(), value.trim().to_owned())]);
    }
    text.split_whitespace()
        .map(|pair| {
            pair.split_once('=')
                .map(|(name, value)| (name.to_owned(), value.trim_matches('"').to_owned()))
                .ok_or_else(|| format!("bad ENV pair `{pair}`"))
        })
        .collect()
}

/// Entrypoints name real binaries that the stage copied in, ENV sets only variables that
/// binary reads, CMD passes only its flags, copies and builds name real binaries, and every
/// workspace binary has an image.
pub fn check(catalog: &Catalog, dockerfile: &Dockerfile, findings: &mut Findings) {
    let mut imaged = Vec::new();
    for stage in &dockerfile.stages {
        let argv = dockerfile.argv(stage);
        let own_entrypoint = stage.entrypoint.is_some() || stage.cmd.is_some();
        match dockerfile.entrypoint_binary(catalog, stage) {
            Some(binary) => {
                imaged.push(binary.clone());
                for (name, _) in &stage.env {
                    check_env_for(catalog, &binary, name, findings);
                }
                if own_entrypoint {
                    check_argv(catalog, &argv, findings);
                    let program = &argv[0];
                    let copied = dockerfile.chain(stage).iter().any(|stage| {
                        stage
                            .copies
                            .iter()
                            .any(|(sources, destination)| copies_to(sources, destination, program))
                    });
                    if !copied {
                        findings.push(format!(
                            "stage {:?} runs {program} but no COPY puts it there",
                            stage.name
                        ));
                    }
                }
            }
            None => {
                for (name, _) in &stage.env {
                    check_topk_env_anywhere(catalog, name, findings);
                }
                if own_entrypoint {
                    check_argv(catalog, &argv, findings);
                }
            }
        }
        for (sources, _) in &stage.copies {
            for source in sources {
                check_binary_path(catalog, source, findings);
            }
        }
        for run in &stage.runs {
            for word in run.split_whitespace() {
                if word.contains("target/release/") || word.contains("target/debug/") {
                    check_binary_path(catalog, word, findings);
                }
            }
        }
    }
    for binary in catalog.binaries.keys() {
        if !imaged.contains(binary) {
            findings.push(format!("no stage has `{binary}` as its ENTRYPOINT"));
        }
    }
}

/// Whether a COPY of `sources` to `destination` creates `path`.
fn copies_to(sources: &[String], destination: &str, path: &str) -> bool {
    if destination == path {
        return true;
    }
    let directory = destination.trim_end_matches('/');
    sources.iter().any(|source| {
        let base = source.rsplit('/').next().unwrap_or(source);
        format!("{directory}/{base}") == path
    })
}

/// A path whose file name looks like one of ours (`topk-…`) must be a workspace binary.
fn check_binary_path(catalog: &Catalog, path: &str, findings: &mut Findings) {
    let base = path.rsplit('/').next().unwrap_or(path);
    if base.starts_with("topk-") && !catalog.is_binary(base) {
        findings.push(format!("`{path}` is not a binary of the workspace"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_inherit_env_and_entrypoint() {
        let dockerfile = Dockerfile::parse(
            "FROM rust AS builder\nRUN cargo build \\\n  --release\n\
             FROM debian AS runtime\nENV A=1 B=\"two\"\n\
             FROM runtime AS app\nENV B=three\nCOPY --from=builder /out/app /usr/local/bin/\n\
             ENTRYPOINT [\"/usr/local/bin/app\"]\nCMD run --fast\n",
        )
        .unwrap();
        assert_eq!(dockerfile.stages.len(), 3);
        assert_eq!(dockerfile.stages[0].runs, ["cargo build  --release"]);
        let app = dockerfile.stage("app").unwrap();
        let env = dockerfile.env(app);
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "three");
        assert_eq!(
            dockerfile.argv(app),
            ["/usr/local/bin/app", "/bin/sh", "-c", "run --fast"]
        );
        assert!(copies_to(
            &app.copies[0].0,
            &app.copies[0].1,
            "/usr/local/bin/app"
        ));
    }
}
